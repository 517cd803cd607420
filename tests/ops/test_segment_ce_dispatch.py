"""Choosing the segment-loss implementation, the op builders, and what ``natscale env`` reports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from natscale.ops import report, segment_cross_entropy, segment_cross_entropy_reference
from natscale.ops.builder import SEGMENT_CE_CPU, SegmentCECPUBuilder, SegmentCECUDABuilder
from natscale.ops.segment_ce import dispatch
from natscale.ops.segment_ce.dispatch import ENV_VAR, choose_impl, resolve_impl
from tests.ops.segment_ce_cases import make_inputs

CPU = torch.device("cpu")


class BrokenBuilder(SegmentCECPUBuilder):
    """A real JIT build that fails: one of its sources does not exist."""

    name = "natscale_segment_ce_broken_for_tests"
    prebuilt_name = "natscale.ops._no_such_module"

    def source_names(self) -> list[str]:
        return ["segment_ce/segment_ce_api.cpp", "segment_ce/no_such_source.cpp"]


def test_report_lists_every_implementation():
    (op,) = report()
    assert op["name"] == "segment_cross_entropy"
    assert op["active"] in ("reference", "cpu", "cuda")
    impls = {impl["name"]: impl for impl in op["implementations"]}
    assert list(impls) == ["reference", "cpu", "cuda"]
    for impl in impls.values():
        assert set(impl) == {"name", "built", "buildable", "reason"}
        assert isinstance(impl["reason"], str) and impl["reason"]
    if torch.version.cuda is None:
        assert not impls["cuda"]["buildable"] and "CPU-only" in impls["cuda"]["reason"]


def test_auto_uses_the_cpu_build_on_cpu(cpu_build, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_impl(CPU, torch.float32) == "cpu"
    assert resolve_impl(CPU, torch.float64) == "reference"  # the native builds take fp32/16-bit
    assert report()[0]["active"] == ("cuda" if torch.cuda.is_available() else "cpu")
    status = SEGMENT_CE_CPU.status()
    assert status["built"] and status["buildable"]
    assert SEGMENT_CE_CPU.is_available() == (True, status["reason"])


def test_environment_forces_the_reference(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    inputs = make_inputs(20, 8, 50)
    got = segment_cross_entropy(*inputs.args())
    want = segment_cross_entropy_reference(*inputs.args())
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert report()[0]["active"] == "reference"


def test_invalid_or_misplaced_choices_are_errors(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="auto, reference, cpu, cuda"):
        resolve_impl(CPU, torch.float32)
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="tensors are on cpu"):
        resolve_impl(CPU, torch.float32)
    assert report()[0]["active"].startswith(("invalid", "cuda"))


def test_builder_without_compiler_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    builder = BrokenBuilder()
    ok, reason = builder.compatible()
    assert not ok and "no C++ compiler" in reason
    status = builder.status()
    assert status == {"name": "cpu", "built": False, "buildable": False, "reason": reason}
    assert builder.is_available() == (False, reason)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        builder.load()


def test_cuda_builder_names_a_cuda_home_without_headers(monkeypatch, tmp_path):
    """torch takes CUDA_HOME from `which nvcc`; a wrapper in /usr/local/bin gives /usr/local."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))
    ok, reason = SegmentCECUDABuilder().compatible()
    assert not ok
    assert f"CUDA_HOME={tmp_path} has no include/cuda_runtime.h" in reason
    assert "/usr/local/cuda" in reason
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    ok, reason = SegmentCECUDABuilder().compatible()
    assert "cuda_runtime.h" not in reason


def test_failed_build_falls_back_in_auto_and_raises_when_forced(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    broken = BrokenBuilder()
    monkeypatch.setattr(dispatch, "SEGMENT_CE_CPU", broken)
    with pytest.warns(RuntimeWarning, match="JIT build of natscale op"):
        assert choose_impl("cpu", torch.float32) == "reference"
    assert not broken.usable() and "last load failed" in broken.status()["reason"]
    assert not broken.is_available()[0]
    with pytest.raises(RuntimeError, match="failed"):
        choose_impl("cpu", torch.float32, "cpu")


def test_jit_build_dir_matches_torch(monkeypatch, tmp_path):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert str(SEGMENT_CE_CPU.jit_build_dir()) == _get_build_directory(SEGMENT_CE_CPU.name, False)


def test_natscale_env_shows_the_op(cpu_build):
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "env"], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("op segment_cross_entropy: active=") for line in lines)
    for name in ("reference", "cpu", "cuda"):
        assert any(line.split()[:1] == [name] for line in lines), name
