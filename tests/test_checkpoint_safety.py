"""Checkpoints are loaded weights-only: a crafted pickle is refused and never runs.

Each crafted file, loaded with plain ``torch.load(..., weights_only=False)``, would create a marker
file; every test asserts the marker does not exist afterwards.
"""

from __future__ import annotations

import builtins
import multiprocessing
import os
import pickle
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from natscale.checkpoint.safety import (
    UnsafeCheckpointError,
    allowed_globals,
    check_files,
    install_in_worker,
    load_weights_only,
    weights_only_loads,
)


class _SystemCall:
    """Unpickling runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    """Unpickling runs ``exec("open(MARKER, 'w').write('x')")`` (builtins, no os module)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('x')",))


def craft(path: Path, payload: object) -> Path:
    """A DeepSpeed-looking optimizer file with ``payload`` inside."""
    torch.save({"optimizer_state_dict": {"zero_stage": 3, "hook": payload}}, path)
    return path


def _load_unsafely(path: str) -> object:
    """What DeepSpeed's readers do, run in a pool worker."""
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("kind", [_SystemCall, _Exec], ids=["os.system", "builtins.exec"])
def test_crafted_pickle_is_refused_and_does_not_run(tmp_path: Path, kind):
    marker = tmp_path / "marker"
    evil = craft(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", kind(marker))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_weights_only(evil, map_location="cpu", mmap=True)
    assert not marker.exists()
    msg = str(err.value)
    assert str(evil) in msg and "weights-only" in msg
    assert ("posix.system" in msg) if kind is _SystemCall else ("builtins.exec" in msg)
    assert "weights_only=False" not in msg  # no escape hatch offered


def test_wrapped_torch_load_ignores_weights_only_false(tmp_path: Path):
    marker = tmp_path / "marker"
    evil = craft(tmp_path / "evil.pt", _SystemCall(marker))
    original = torch.load
    with weights_only_loads(), pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        torch.load(evil, map_location="cpu", weights_only=False)
    assert torch.load is original  # restored
    assert not marker.exists()


def test_deepspeed_checkpoint_engine_load_is_weights_only(tmp_path: Path):
    """engine.load_checkpoint reads every file through its checkpoint engine's load()."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "marker"
    evil = craft(tmp_path / "mp_rank_00_model_states.pt", _SystemCall(marker))
    with weights_only_loads(), pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        TorchCheckpointEngine().load(str(evil), map_location="cpu")
    assert not marker.exists()


def test_the_deepspeed_types_load_and_need_the_allow_list(tmp_path: Path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {
        "loss_scaler": LossScaler(scale=1.0),
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"w": fragment_address(numel=6, start=2)}],
        "flat": torch.arange(4.0),
    }
    path = tmp_path / "optim.pt"
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):  # torch's defaults alone refuse them
        torch.load(path, weights_only=True)
    loaded = load_weights_only(path)
    assert loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=6, start=2)
    assert torch.equal(loaded["flat"], torch.arange(4.0))
    assert len(allowed_globals()) == 3
    check_files([path])  # passes


def test_check_files_names_the_file_and_the_type_without_running_it(tmp_path: Path):
    marker = tmp_path / "marker"
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.ones(2)}}, good)
    evil = craft(tmp_path / "evil.pt", _SystemCall(marker))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])  # left to the load, which reports it
    check_files([good, truncated])
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*posix\.system"):
        check_files([good, truncated, evil])
    assert not marker.exists()


def test_truncated_file_is_not_called_unsafe(tmp_path: Path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    good.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(RuntimeError, match="failed reading zip archive") as err:
        load_weights_only(good)  # torch's own error, passed through
    assert not isinstance(err.value, UnsafeCheckpointError)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_workers_load_weights_only(tmp_path: Path, start: str):
    """ds_to_universal's --workers pools: forked workers inherit the wrapper, spawned ones get it
    from the initializer natscale gives the pool."""
    from deepspeed.checkpoint import ds_to_universal

    from natscale.checkpoint.universal import _pool_initializer

    marker = tmp_path / "marker"
    evil = craft(tmp_path / "evil.pt", _SystemCall(marker))
    ctx = multiprocessing.get_context(start)
    pool_cls = ds_to_universal.ProcessPoolExecutor
    ds_to_universal.ProcessPoolExecutor = lambda **kw: ProcessPoolExecutor(mp_context=ctx, **kw)
    try:
        with (
            weights_only_loads(),
            _pool_initializer(ds_to_universal, install_in_worker),
            pytest.raises(UnsafeCheckpointError, match=r"posix\.system"),
        ):
            ds_to_universal._do_parallel_work(_load_unsafely, [str(evil)] * 2, 2)
    finally:
        ds_to_universal.ProcessPoolExecutor = pool_cls
    assert not marker.exists()


def _sleep() -> None:
    time.sleep(0.2)


def test_a_stopped_pool_cancels_the_work_not_started():
    """ds_to_universal's `with ProcessPoolExecutor(...)`, left by Ctrl-C/SIGTERM, cancels the
    queued tasks instead of waiting for all of them (a plain pool's shutdown runs them all)."""
    import types

    from natscale.checkpoint.universal import _pool_initializer

    module = types.SimpleNamespace(ProcessPoolExecutor=ProcessPoolExecutor)
    futures = []
    with (
        _pool_initializer(module, install_in_worker),
        pytest.raises(KeyboardInterrupt),
        module.ProcessPoolExecutor(max_workers=1) as pool,
    ):
        futures += [pool.submit(_sleep) for _ in range(20)]
        raise KeyboardInterrupt
    assert module.ProcessPoolExecutor is ProcessPoolExecutor
    assert sum(f.cancelled() for f in futures) > 10


def test_rng_state_loads_weights_only_and_restores_every_stream(tmp_path: Path):
    from natscale.checkpoint.save import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    torch.manual_seed(3)
    path = tmp_path / "client_state.pt"
    torch.save({"rng_states": [rng_state()]}, path)
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    check_files([path])
    set_rng_state(torch.load(path, weights_only=True)["rng_states"][0])  # torch's defaults only
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_numpy_rng_state_of_older_checkpoints_is_refused_with_a_note(tmp_path: Path):
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    torch.save({"rng_states": [{"numpy": np.random.get_state()}]}, path)
    with pytest.raises(
        UnsafeCheckpointError, match=r"numpy\._core\.multiarray\._reconstruct"
    ) as err:
        load_weights_only(path)
    assert "natscale version that wrote them" in str(err.value)
