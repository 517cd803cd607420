"""natscale build script.

Pure-Python by default. ``NATSCALE_BUILD_OPS=1`` also builds the native segment-loss extension
(CPU C++ always; CUDA when a CUDA toolkit and a CUDA build of torch are present). Other knobs:
``NATSCALE_CUDA_ARCH_LIST`` (default ``9.0``) and ``NATSCALE_NVCC_THREADS`` (default 4).
Without a prebuilt extension, natscale JIT-builds it on first use (see ``natscale env``).
"""

from __future__ import annotations

import os

from setuptools import find_packages, setup

BUILD_OPS = os.environ.get("NATSCALE_BUILD_OPS", "0") == "1"


def _ext_modules_and_cmdclass() -> tuple[list, dict]:
    if not BUILD_OPS:
        return [], {}
    # The native build needs torch at build time: `pip install --no-build-isolation ...`.
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from natscale.ops.builder import ext_modules_and_cmdclass
    except ImportError as exc:
        raise SystemExit(
            f"NATSCALE_BUILD_OPS=1 needs torch importable at build time ({exc}); "
            "install torch first and use `pip install --no-build-isolation .`"
        ) from exc
    return ext_modules_and_cmdclass()


ext_modules, cmdclass = _ext_modules_and_cmdclass()

setup(
    packages=find_packages(include=["natscale", "natscale.*"]),
    # the default DeepSpeed configs and the op sources travel with the package (wheel included)
    package_data={
        "natscale": [
            "py.typed",
            "assets/**/*",
            "ds_configs/*.json",
            "csrc/**/*.cpp",
            "csrc/**/*.cu",
            "csrc/**/*.cuh",
            "csrc/**/*.h",
        ]
    },
    include_package_data=False,  # exactly package_data (no data folder is mistaken for a package)
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
