"""Compile checks of the CUDA sources that need no GPU (and no CUDA build of torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from natscale.ops.builder import csrc_dir
from tests.ops.segment_ce_cases import SLOW

NVCC = shutil.which("nvcc")
SOURCES = csrc_dir() / "segment_ce"


def _cuda_include() -> Path | None:
    """The toolkit's include folder ($CUDA_HOME, /usr/local/cuda, or next to the real nvcc)."""
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    if NVCC:
        candidates.append(str(Path(NVCC).resolve().parent.parent))
    for root in filter(None, candidates):
        if (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root) / "include"
    return None


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_kernels_compile_with_plain_nvcc_for_sm90(tmp_path):
    """The torch-free kernels, as CI compiles them: no warnings, no register spills.

    With the flags torch's CUDAExtension adds (no implicit half/bfloat16 conversions).
    """
    cmd = [
        NVCC,
        "-arch=sm_90",
        "-std=c++17",
        "-O3",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
        "--Werror",
        "all-warnings",
        "-Xptxas",
        "-warn-spills,-warn-lmem-usage",
        "-c",
        str(SOURCES / "segment_ce_kernels.cu"),
        "-o",
        str(tmp_path / "segment_ce_kernels.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert (tmp_path / "segment_ce_kernels.o").stat().st_size > 0


@pytest.mark.slow
@SLOW
@pytest.mark.skipif(_cuda_include() is None, reason="CUDA toolkit headers not found")
def test_cuda_binding_compiles_against_this_torch(tmp_path):
    """The torch side of the CUDA build, compiled (not linked) with the host compiler.

    A CPU wheel of torch ships the ATen/cuda and c10/cuda headers but not the generated
    c10/cuda/impl/cuda_cmake_macros.h that they include; a one-line stub
    (``#define C10_CUDA_BUILD_SHARED_LIBS``) stands in for it. Takes ~1-2 minutes.
    """
    import torch

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    torch_include = Path(torch.__file__).parent / "include"
    cuda_include = _cuda_include()
    for name in ("segment_ce_cuda.cpp", "segment_ce_api.cpp"):
        cmd = [
            "c++",
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-DNATSCALE_WITH_CUDA",
            "-DTORCH_EXTENSION_NAME=natscale_segment_ce_cuda",
            f"-I{tmp_path / 'stub'}",
            f"-I{SOURCES}",
            f"-isystem{torch_include}",
            f"-isystem{torch_include / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-isystem{cuda_include}",
            f"-isystem{sysconfig.get_paths()['include']}",
            str(SOURCES / name),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
@SLOW
def test_prebuilt_extension_via_setup_py(tmp_path):
    """``NATSCALE_BUILD_OPS=1`` builds the CPU extension ahead of time; it is then used as is."""
    import sys

    root = csrc_dir().parents[1]  # natscale/csrc -> the repository
    shutil.copytree(root / "natscale", tmp_path / "natscale", ignore=shutil.ignore_patterns("*.so"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    env = {**os.environ, "NATSCALE_BUILD_OPS": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path / "jit")}
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    probe = (
        "from natscale.ops.builder import SEGMENT_CE_CPU as b; m = b.load(); "
        "print(m.__name__, b.status()['reason'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("natscale.ops._segment_ce_cpu "), proc.stdout
    assert not (tmp_path / "jit").exists()  # nothing was JIT-built
