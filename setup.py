"""Builds eqnorm._C, the compiled kernels: C++ on the CPU, plus CUDA where the torch build and the CUDA toolkit allow.

Build against the torch you will run with: ``pip install --no-build-isolation .``. torch is no build requirement:
an isolated build environment would compile against whatever torch it downloads, for half an hour, and the extension
would not load beside yours, so such a build stops at once, saying the command to use. An sdist needs no torch.

A failed build fails the install with the compiler's error. Environment variables:

- ``EQNORM_OPTIONAL_EXTENSION=1``: a failed build is tolerated; eqnorm installs with its pure-PyTorch kernels and
  ``import eqnorm`` warns once, saying why.
- ``EQNORM_NO_EXTENSION=1``: do not build the extension at all (pure-PyTorch kernels, with the same warning).
- ``EQNORM_CUDA=1`` / ``EQNORM_CUDA=0``: force the CUDA kernels on (an error if they cannot be built) or off.
- ``EQNORM_DEBUG=1``: keep debug information (release builds are compiled with ``-g0`` and stripped).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
#: written next to the package when the extension is skipped or its build fails, read by ``import eqnorm``
BUILD_NOTE = "eqnorm/_extension_missing.txt"
#: the torch the extension was compiled against, read by ``import eqnorm`` when the extension does not load
BUILT_WITH = "eqnorm/_built_with.txt"
#: the torch releases tested (scripts/dev.sh test with 2.13, the op, tracing and e3nn tests with 2.15)
TORCH_RANGE = "torch>=2.13"


def cxx_standard(torch_version: str) -> str:
    """The C++ standard torch's headers need: C++17 up to 2.13, C++20 from 2.14 on."""
    from torch.torch_version import TorchVersion

    return "-std=c++20" if TorchVersion(torch_version) >= (2, 14) else "-std=c++17"


def cuda_toolkit_ready() -> bool:
    """True when this torch has CUDA and the toolkit's compiler and runtime headers are both present."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return False
    home = cpp_extension.CUDA_HOME
    nvcc = shutil.which("nvcc") or (home and os.path.join(home, "bin", "nvcc"))
    return bool(home and nvcc and os.path.exists(nvcc) and (Path(home) / "include" / "cuda_runtime_api.h").exists())


#: setup.py commands that compile nothing: an sdist, and the metadata pip asks for before it builds
METADATA_ONLY = {"sdist", "egg_info", "dist_info", "--name", "--version", "check"}


def installed_torch() -> str | None:
    """The torch version of the environment this build installs into, seen from outside pip's isolated build
    environment (which hides it), or None."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONNOUSERBASE")}
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def no_torch_to_build_against() -> SystemExit:
    """The error of a build with no torch in sight: pip's build isolation, or torch not installed yet."""
    found = installed_torch()
    if found:
        why = (
            f"pip built eqnorm in an isolated environment without the torch {found} you have; the kernels must "
            "compile against that torch"
        )
    else:
        why = "torch is not installed; the kernels compile against the torch you will run with, so install it first"
    return SystemExit(
        f"eqnorm-layers: {why}. Install with:\n\n"
        "    pip install --no-build-isolation 'eqnorm-layers[e3nn]'\n"
        "    pip install escnn 'numpy<2' && pip install --no-build-isolation 'eqnorm-layers[escnn]'   # or [all]\n\n"
        "(EQNORM_NO_EXTENSION=1 installs the pure-PyTorch kernels only, with no build.)"
    )


def extension_modules() -> list:
    if os.environ.get("EQNORM_NO_EXTENSION") == "1":
        return []
    if importlib.util.find_spec("torch") is None:
        if METADATA_ONLY.intersection(sys.argv[1:]):
            return []
        raise no_torch_to_build_against()
    import torch
    from torch.utils import cpp_extension

    sources = [
        "csrc/schemas.cpp",
        "csrc/field_norm.cpp",
        "csrc/autograd.cpp",
        "csrc/cpu_passes.cpp",
        "csrc/cpu_rows.cpp",
        "csrc/cpu_field_norm.cpp",
        "csrc/segment_offsets.cpp",
    ]
    flag = os.environ.get("EQNORM_CUDA")
    can_cuda = cuda_toolkit_ready()
    if flag == "1" and not can_cuda:
        raise RuntimeError(
            "EQNORM_CUDA=1, but this torch has no CUDA or the CUDA toolkit (nvcc and include/cuda_runtime_api.h "
            "under CUDA_HOME) is missing"
        )
    use_cuda = can_cuda if flag is None else flag == "1"
    std = cxx_standard(torch.__version__)
    # no debug information in what is installed (Python's own flags carry -g: 21 MB of it); EQNORM_DEBUG=1 keeps it
    release = os.environ.get("EQNORM_DEBUG") != "1"
    cxx = ["-O3", std, "-fopenmp", *(["-g0"] if release else [])]  # at::parallel_for is OpenMP in the header
    link = ["-fopenmp", *(["-s"] if release else [])]
    options = {"include_dirs": [str(ROOT / "csrc")], "extra_link_args": link}
    if use_cuda:
        kernels = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        sources += ["csrc/cuda_binding.cpp", *kernels]
        nvcc = ["-O3", std, "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        return [
            cpp_extension.CUDAExtension("eqnorm._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **options)
        ]
    return [cpp_extension.CppExtension("eqnorm._C", sources, extra_compile_args=cxx, **options)]


def torch_requirement() -> str:
    """What the built distribution needs: the torch minor release its kernels were compiled against (torch's C++
    ABI changes between minor releases), or the tested range when nothing is compiled."""
    if os.environ.get("EQNORM_NO_EXTENSION") == "1" or importlib.util.find_spec("torch") is None:
        return TORCH_RANGE
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


def build_ext_class() -> dict:
    from setuptools.command.build_py import build_py

    class BuildPy(build_py):
        """Carries the note of a skipped extension into the wheel, and never a stale one."""

        def run(self) -> None:
            note = ROOT / BUILD_NOTE
            if os.environ.get("EQNORM_NO_EXTENSION") == "1":
                note.write_text("it was skipped at build time (EQNORM_NO_EXTENSION=1)\n")
            super().run()

    commands: dict = {"build_py": BuildPy}
    if os.environ.get("EQNORM_NO_EXTENSION") == "1" or importlib.util.find_spec("torch") is None:
        return commands  # nothing to compile (extension_modules has stopped a build that needed torch)
    from torch.utils.cpp_extension import BuildExtension

    optional = os.environ.get("EQNORM_OPTIONAL_EXTENSION") == "1"

    class NoteBuildExtension(BuildExtension.with_options(no_python_abi_suffix=True)):
        def run(self) -> None:
            notes = [ROOT / BUILD_NOTE, Path(self.build_lib) / BUILD_NOTE]
            try:
                super().run()
            except Exception as error:
                if not optional:
                    raise
                text = f"its build failed and EQNORM_OPTIONAL_EXTENSION=1 allowed that: {error}\n"
                print(f"eqnorm: the compiled kernels were not built ({error}); using the pure-PyTorch kernels")
                for note in notes:
                    if note.parent.exists():
                        note.write_text(text)
                return
            for note in notes:
                note.unlink(missing_ok=True)
            import torch

            for built in (ROOT / BUILT_WITH, Path(self.build_lib) / BUILT_WITH):
                if built.parent.exists():
                    built.write_text(f"{torch.__version__}\n")

    commands["build_ext"] = NoteBuildExtension
    return commands


setup(
    ext_modules=extension_modules(),
    cmdclass=build_ext_class(),
    install_requires=[torch_requirement(), "numpy"],
    package_data={"eqnorm": ["_built_with.txt", "_extension_missing.txt"]},
)
