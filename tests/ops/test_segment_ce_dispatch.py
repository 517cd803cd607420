"""Choosing the segment-loss implementation, the op builders, and what ``natscale env`` reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from natscale.ops import report, segment_cross_entropy, segment_cross_entropy_reference
from natscale.ops.builder import (
    REBUILD_COMMAND,
    SEGMENT_CE_CPU,
    SegmentCECPUBuilder,
    SegmentCECUDABuilder,
    csrc_dir,
)
from natscale.ops.segment_ce import dispatch
from natscale.ops.segment_ce.dispatch import ENV_VAR, choose_impl, last_choice, resolve_impl
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
    assert op["why"] and isinstance(op["ran"], dict)
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
    active = [line for line in lines if line.startswith("op segment_cross_entropy: active=")]
    assert len(active) == 1 and ("(auto: " in active[0] or "(requested" in active[0]), active
    for name in ("reference", "cpu", "cuda"):
        assert any(line.split()[:1] == [name] for line in lines), name


class BrokenCUDABuilder(SegmentCECUDABuilder):
    """The CUDA build, unavailable: no such prebuilt module, and a source that does not exist."""

    name = "natscale_segment_ce_cuda_broken_for_tests"
    prebuilt_name = "natscale.ops._no_such_cuda_module"

    def source_names(self) -> list[str]:
        return ["segment_ce/segment_ce_api.cpp", "segment_ce/no_such_source.cu"]


def test_auto_records_which_implementation_ran_and_why(cpu_build, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    inputs = make_inputs(20, 8, 50)
    segment_cross_entropy(*inputs.args())
    ran = last_choice()["cpu"]
    assert ran["impl"] == "cpu" and ran["dtype"] == "float32"
    assert ran["why"].startswith("auto: cpu build loaded from ")
    segment_cross_entropy(*inputs.args(), impl="reference")
    assert last_choice()["cpu"] == {
        "impl": "reference", "why": "requested (impl=reference)", "dtype": "float32"
    }  # fmt: skip
    segment_cross_entropy(inputs.hidden.double(), inputs.weight.double(), *inputs.args()[2:])
    assert last_choice()["cpu"]["impl"] == "reference"
    assert "torch.float64 inputs" in last_choice()["cpu"]["why"]
    assert report()[0]["ran"]["cpu"] == last_choice()["cpu"]


def test_auto_fallback_on_cuda_is_a_loud_warning(monkeypatch, tmp_path):
    """On CUDA, auto never drops to the [T, V] reference quietly: a RuntimeWarning with the
    reason, every time (here the CUDA build is unavailable or fails to build)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "SEGMENT_CE_CUDA", BrokenCUDABuilder())
    for _ in range(2):
        with pytest.warns(
            RuntimeWarning, match=r"on CUDA falls back to the PyTorch reference.*\[T, V\]"
        ):
            assert choose_impl("cuda", torch.bfloat16) == "reference"
    assert last_choice()["cuda"]["impl"] == "reference"
    assert last_choice()["cuda"]["why"].startswith("auto: the cuda build")
    monkeypatch.setenv(ENV_VAR, "reference")  # chosen knowingly: recorded, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_impl("cuda", torch.bfloat16) == "reference"
    assert last_choice()["cuda"]["why"] == f"requested ({ENV_VAR}=reference)"


class PrebuiltFrom(SegmentCECPUBuilder):
    """The CPU builder whose "prebuilt" module is a given, really built extension and whose sources
    are read from ``root`` (a copy of csrc/)."""

    def __init__(self, module, root: Path) -> None:
        super().__init__()
        self._prebuilt, self._root = module, root

    def prebuilt(self):
        return self._prebuilt

    def source_root(self) -> Path:
        return self._root


def test_prebuilt_extension_with_other_sources_is_refused(cpu_build, tmp_path):
    if not cpu_build.sources_hash:
        pytest.skip("this extension was built without a sources hash")
    root = tmp_path / "csrc"
    shutil.copytree(csrc_dir(), root)
    same = PrebuiltFrom(cpu_build, root)
    assert same.sources_hash() == cpu_build.sources_hash == SEGMENT_CE_CPU.sources_hash()
    assert same.load() is cpu_build and same.status()["built"]
    source = root / "segment_ce" / "segment_ce_cpu.cpp"
    source.write_text(source.read_text() + "\n// edited\n")
    stale = PrebuiltFrom(cpu_build, root)
    with pytest.raises(RuntimeError, match="built from other sources") as err:
        stale.load()
    assert REBUILD_COMMAND in str(err.value)
    status = stale.status()
    assert not status["built"] and status["reason"].startswith("refused: ")
    assert stale.is_available()[0] is False  # so auto does not pick it


def test_killed_jit_build_leaves_no_lock_that_hangs_later_loads(cpu_build, tmp_path):
    """torch's build lock is a file only a finished build removes; a build killed mid-way left it
    and every later load waited for ever. Now the next load notices and removes it."""
    build_dir = SEGMENT_CE_CPU.jit_build_dir()
    if not (build_dir / f"{SEGMENT_CE_CPU.name}.so").exists():
        pytest.skip("the CPU extension is not JIT-built here (prebuilt)")
    jit = tmp_path / "jit"
    shutil.copytree(build_dir, jit / SEGMENT_CE_CPU.name)  # the finished build (mtimes kept)
    (jit / SEGMENT_CE_CPU.name / "lock").write_text("")  # what a killed build leaves
    probe = "from natscale.ops.builder import SEGMENT_CE_CPU as b; print(b.load().__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "TORCH_EXTENSIONS_DIR": str(jit)},
        capture_output=True,
        text=True,
        timeout=240,  # before the fix: waits on the lock until killed here
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left by a build that did not finish" in proc.stderr
    assert not (jit / SEGMENT_CE_CPU.name / "lock").exists()
