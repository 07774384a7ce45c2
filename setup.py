"""Builds eqnorm._C, the compiled kernels: C++ on the CPU, plus CUDA where the torch build and the CUDA toolkit allow.

Build against the torch you will run with: ``pip install --no-build-isolation .`` (an isolated build environment
would compile against whatever torch it downloads, and the extension would not load beside yours).

A failed build fails the install with the compiler's error. Environment variables:

- ``EQNORM_OPTIONAL_EXTENSION=1``: a failed build is tolerated; eqnorm installs with its pure-PyTorch kernels and
  ``import eqnorm`` warns once, saying why.
- ``EQNORM_NO_EXTENSION=1``: do not build the extension at all (pure-PyTorch kernels, with the same warning).
- ``EQNORM_CUDA=1`` / ``EQNORM_CUDA=0``: force the CUDA kernels on (an error if they cannot be built) or off.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
#: written next to the package when the extension is skipped or its build fails, read by ``import eqnorm``
BUILD_NOTE = "eqnorm/_extension_missing.txt"


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


def extension_modules() -> list:
    if os.environ.get("EQNORM_NO_EXTENSION") == "1":
        return []
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
    cxx = ["-O3", std, "-fopenmp"]  # at::parallel_for is OpenMP in the header
    options = {"include_dirs": [str(ROOT / "csrc")], "extra_link_args": ["-fopenmp"]}
    if use_cuda:
        kernels = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        sources += ["csrc/cuda_binding.cpp", *kernels]
        nvcc = ["-O3", std, "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        return [
            cpp_extension.CUDAExtension("eqnorm._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **options)
        ]
    return [cpp_extension.CppExtension("eqnorm._C", sources, extra_compile_args=cxx, **options)]


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
    if os.environ.get("EQNORM_NO_EXTENSION") == "1":
        return commands
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

    commands["build_ext"] = NoteBuildExtension
    return commands


setup(ext_modules=extension_modules(), cmdclass=build_ext_class())
