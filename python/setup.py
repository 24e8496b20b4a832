"""Build and package flashattn: runs CMake on the repository root (the
directory above this one) and puts libflashattn into flashattn/_lib/.

    pip install --no-build-isolation ./python        # from the repository root

Environment:
    FLASHATTN_CUDA=0          build without the CUDA backends even if nvcc is found
    FLASHATTN_CUDA_ARCHS=...  CMake FA_CUDA_ARCHS for the portable kernels (e.g. "90-real")
    FLASHATTN_BUILD_JOBS=N    parallel build jobs (default: the number of CPUs)
    CUDACXX=/path/to/nvcc     the CUDA compiler (default: nvcc on PATH or /usr/local/cuda)
"""

import os
import re
import shutil
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("FLASHATTN_SOURCE_DIR", os.path.dirname(HERE))
LIB_NAME = {"darwin": "libflashattn.dylib"}.get(sys.platform, "libflashattn.so")


def library_version():
    with open(os.path.join(SOURCE_DIR, "include", "flashattn.h")) as f:
        header = f.read()
    parts = [re.search(rf"#define FA_VERSION_{p} (\d+)", header).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def find_nvcc():
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.exists(c)), None)


class BuildWithLibrary(build_py):
    """build_py that first builds libflashattn with CMake and copies it into
    the package's _lib/ folder."""

    def run(self):
        super().run()
        if not os.path.exists(os.path.join(SOURCE_DIR, "CMakeLists.txt")):
            raise RuntimeError(
                f"flashattn: no CMakeLists.txt in {SOURCE_DIR}: install from the repository "
                "(pip install --no-build-isolation ./python) or set FLASHATTN_SOURCE_DIR"
            )
        build_dir = os.path.join(HERE, "build", "cmake")
        configure = ["cmake", "-S", SOURCE_DIR, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     "-DFA_BUILD_TESTS=OFF", "-DFA_BUILD_TOOLS=OFF"]
        nvcc = find_nvcc()
        if os.environ.get("FLASHATTN_CUDA", "1") == "0" or nvcc is None:
            configure.append("-DFA_ENABLE_CUDA=OFF")
        else:
            configure += ["-DFA_ENABLE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
            if os.environ.get("FLASHATTN_CUDA_ARCHS"):
                configure.append(f"-DFA_CUDA_ARCHS={os.environ['FLASHATTN_CUDA_ARCHS']}")
        jobs = os.environ.get("FLASHATTN_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "flashattn",
                               "--parallel", jobs])
        built = os.path.realpath(os.path.join(build_dir, LIB_NAME))
        target_dir = os.path.join(self.build_lib, "flashattn", "_lib")
        os.makedirs(target_dir, exist_ok=True)
        shutil.copyfile(built, os.path.join(target_dir, LIB_NAME))


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform."""

    def has_ext_modules(self):
        return True


setup(
    name="flashattn",
    version=library_version(),
    description="FlashAttention (exact, IO-aware attention) for PyTorch over the flashattn C "
                "library: a drop-in for flash_attn's FlashAttention-2 and -3 interfaces",
    packages=["flashattn", "flashattn.integrations"],
    python_requires=">=3.8",
    cmdclass={"build_py": BuildWithLibrary},
    distclass=BinaryDistribution,
    zip_safe=False,
)
