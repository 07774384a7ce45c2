"""Builds eqnorm._C, the compiled passes: C++ on the CPU, plus CUDA when the torch build and nvcc allow it.

EQNORM_CUDA=1 forces the CUDA kernels on (an error if they cannot be built), EQNORM_CUDA=0 forces them off.
EQNORM_NO_EXTENSION=1 skips the extension: eqnorm then runs its pure-PyTorch passes. A failed build is reported and
skipped the same way (a machine with no compiler still installs eqnorm), unless EQNORM_REQUIRE_EXTENSION=1 or
EQNORM_CUDA=1 is set, as CI does.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup


def extension_modules() -> list:
    if os.environ.get("EQNORM_NO_EXTENSION") == "1":
        return []
    import torch
    from torch.utils import cpp_extension

    root = Path(__file__).parent
    sources = ["csrc/schemas.cpp", "csrc/cpu_passes.cpp", "csrc/cpu_coefficients.cpp"]
    flag = os.environ.get("EQNORM_CUDA")
    can_cuda = torch.version.cuda is not None and (shutil.which("nvcc") is not None or cpp_extension.CUDA_HOME)
    if flag == "1" and not can_cuda:
        raise RuntimeError("EQNORM_CUDA=1 but this torch build has no CUDA or nvcc is missing")
    use_cuda = can_cuda if flag is None else flag == "1"
    cxx = ["-O3", "-std=c++17", "-fopenmp"]  # at::parallel_for is OpenMP in the header
    if use_cuda:
        sources += ["csrc/cuda_binding.cpp", "csrc/cuda/passes.cu", "csrc/cuda/coefficients.cu"]
        nvcc = ["-O3", "-std=c++17", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        return [
            cpp_extension.CUDAExtension(
                "eqnorm._C",
                sources,
                include_dirs=[str(root / "csrc")],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        cpp_extension.CppExtension(
            "eqnorm._C",
            sources,
            include_dirs=[str(root / "csrc")],
            extra_compile_args=cxx,
            extra_link_args=["-fopenmp"],
        )
    ]


def build_ext_class() -> dict:
    if os.environ.get("EQNORM_NO_EXTENSION") == "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    required = os.environ.get("EQNORM_REQUIRE_EXTENSION") == "1" or os.environ.get("EQNORM_CUDA") == "1"

    class OptionalBuildExtension(BuildExtension.with_options(no_python_abi_suffix=True)):
        def run(self) -> None:
            try:
                super().run()
            except Exception as error:
                if required:
                    raise
                print(f"eqnorm: the compiled kernels could not be built ({error}); using the pure-PyTorch passes")

    return {"build_ext": OptionalBuildExtension}


setup(ext_modules=extension_modules(), cmdclass=build_ext_class())
