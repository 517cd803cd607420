"""Resuming on a different number of ranks: DeepSpeed's universal checkpoint, thinly wrapped.

A ZeRO checkpoint holds one optimizer (and, for ZeRO-3, parameter) partition per data-parallel
rank, so DeepSpeed refuses to load it on another world size ("The checkpoint being loaded used a DP
world size of 2 but the current world size is 1"). DeepSpeed's ``ds_to_universal`` rewrites a tag
as one file per parameter (fp32 master weight, Adam moments) that any world size can load with
``"checkpoint": {"load_universal": true}``. Layout next to the original tag::

    checkpoints/global_step40/              as written by the 2-rank run
    checkpoints/global_step40_universal/    zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt + model states

The universal folder is written in a temporary folder and renamed into place, so it either exists
complete or not at all. It records the size and modification time of every file of the tag it was
made from (``natscale_source.json``); it is reused only while the tag still holds exactly those
files, and converted again otherwise (the tag was saved again since, e.g. by a run resumed from an
earlier tag). A save or removal of the tag removes its universal copy too (natscale.checkpoint.save).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from natscale.atomic import partial_dir, remove_stale_partials
from natscale.checkpoint.layout import WORLD_FILE, CheckpointDir

SOURCE_FILE = "natscale_source.json"  # in a universal folder: the files of the tag it was made from


class UniversalConversionError(RuntimeError):
    """A ZeRO checkpoint could not be converted to a universal one."""


def source_fingerprint(tag_dir: Path) -> dict[str, list[int]]:
    """``{name: [size, mtime_ns]}`` of the files of ``tag_dir`` (what a universal copy was made of)."""
    found = {}
    for path in sorted(tag_dir.iterdir()):
        if path.is_file():
            st = path.stat()
            found[path.name] = [st.st_size, st.st_mtime_ns]
    return found


def universal_is_current(ckpt_dir: str | Path, tag: str) -> bool:
    """Whether ``ckpt_dir/{tag}_universal`` exists and was made from the files ``tag`` holds now."""
    ckpts = CheckpointDir(ckpt_dir)
    src, dst = ckpts.tag_dir(tag), ckpts.universal_dir(tag)
    if not dst.is_dir() or not src.is_dir():
        return False
    try:
        recorded = json.loads((dst / SOURCE_FILE).read_text(encoding="utf-8"))
        return recorded == source_fingerprint(src)
    except (OSError, ValueError):
        return False  # no record (made before it existed, or cut off): not known to be current


def saved_world_size(tag_dir: str | Path) -> int | None:
    """Data-parallel ranks that wrote the ZeRO tag folder ``tag_dir`` (None: not a ZeRO checkpoint,
    whose optimizer state is not partitioned and loads on any number of ranks).

    natscale's trainer records the number in the tag folder: on node-local disks rank 0 sees only
    its own node's shards, so counting them would take a same-size resume for a different one.
    Folders without that record (DeepSpeed's own, older runs) are judged by their shard files.
    """
    from natscale.checkpoint.zero_files import optim_shard_ranks

    ranks = optim_shard_ranks(Path(tag_dir))
    if not ranks:
        return None
    recorded = Path(tag_dir) / WORLD_FILE
    with contextlib.suppress(OSError, ValueError):
        return int(recorded.read_text().strip())
    return len(ranks)


class _CancellingPool:
    """A process pool whose ``with`` block, left by an exception (Ctrl-C, SIGTERM, an error),
    cancels the work not yet started: a plain pool waits for every queued task first, so a
    stopped conversion went on writing (into a folder about to be removed) until all were done."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def __enter__(self) -> _CancellingPool:
        self._pool.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        if exc_type is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return self._pool.__exit__(exc_type, exc, tb)


def _init_worker() -> None:
    """Initializer of ds_to_universal's pool workers: weights-only loads, and one torch thread.
    GNU OpenMP is not fork-safe: a worker forked from a process whose thread pool has run (any
    large tensor op before the conversion) hangs in its first parallel op otherwise."""
    import torch

    from natscale.checkpoint.safety import install_in_worker

    torch.set_num_threads(1)
    install_in_worker()


@contextlib.contextmanager
def _pool_initializer(module: ModuleType, initializer: Callable[[], None]) -> Iterator[None]:
    """Start the worker pools of ``module`` (ds_to_universal's --workers > 1) with ``initializer``,
    as :class:`_CancellingPool`.

    Forked workers inherit the weights-only ``torch.load`` anyway; this also covers workers that
    start a fresh interpreter (spawn/forkserver, the default from Python 3.14).
    """
    original = module.ProcessPoolExecutor
    make = functools.partial(original, initializer=initializer)
    module.ProcessPoolExecutor = lambda *args, **kwargs: _CancellingPool(make(*args, **kwargs))
    try:
        yield
    finally:
        module.ProcessPoolExecutor = original


@contextlib.contextmanager
def _no_bars(module: ModuleType, progress: bool) -> Iterator[None]:
    """Without ``progress``, the ``tqdm.tqdm`` bars ``module`` shows (DeepSpeed's
    ``ds_to_universal``, in this process) are disabled while the block runs."""
    original = module.tqdm
    if not progress:
        module.tqdm = SimpleNamespace(tqdm=functools.partial(original.tqdm, disable=True))
    try:
        yield
    finally:
        module.tqdm = original


def _run_ds_to_universal(
    ds_to_universal: ModuleType, src: Path, out: Path, workers: int, *, progress: bool = True
) -> None:
    """``ds_to_universal`` (DeepSpeed's module) of ``src`` into ``out``, weights-only, quietly
    (``progress``: its bars on stderr)."""
    from natscale.checkpoint.safety import weights_only_loads

    args = argparse.Namespace(
        input_folder=str(src),
        output_folder=str(out),
        num_extract_workers=workers,
        num_merge_workers=workers,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2: DeepSpeed wants universal_checkpoint_info, which only Megatron-style clients write
    )
    with (
        weights_only_loads(),
        _pool_initializer(ds_to_universal, _init_worker),
        contextlib.redirect_stdout(io.StringIO()),  # its progress prints; errors still raise
        _no_bars(ds_to_universal, progress),
    ):
        ds_to_universal.main(args)


def convert_to_universal(
    ckpt_dir: str | Path, tag: str, *, workers: int = 1, progress: bool = True
) -> Path:
    """Convert ``ckpt_dir/tag`` to ``ckpt_dir/{tag}_universal`` (returned). An existing one is
    reused when it was made from the files the tag holds now, else converted again.
    ``progress``: DeepSpeed's progress bars on stderr.

    Runs DeepSpeed's ``ds_to_universal`` in this process (no process group needed), its loads
    weights-only. Raises :class:`UniversalConversionError` naming the checkpoint, DeepSpeed's error
    and what to do, or :class:`~natscale.checkpoint.safety.UnsafeCheckpointError` for a file that
    is not weights-only loadable.
    """
    from deepspeed.checkpoint import ds_to_universal

    from natscale.checkpoint.safety import UnsafeCheckpointError, check_files

    ckpt_dir = Path(ckpt_dir)
    ckpts = CheckpointDir(ckpt_dir)
    src, dst = ckpts.tag_dir(tag), ckpts.universal_dir(tag)
    if not src.is_dir():
        raise UniversalConversionError(f"{src}: no such checkpoint tag folder")
    if universal_is_current(ckpt_dir, tag):
        return dst
    check_files(sorted(src.glob("*.pt")))
    # left by a killed conversion of an earlier natscale (named without tag, host or pid)
    for stale in ckpt_dir.glob(".universal.*"):
        shutil.rmtree(stale, ignore_errors=True)
    # left by a killed conversion of this tag on this host (a live one, or another tag's, stays)
    remove_stale_partials(dst)
    tmp = partial_dir(dst)
    tmp.mkdir()
    try:
        # ds_to_universal writes 'latest_universal' next to its output folder: keep it in tmp too
        fingerprint = source_fingerprint(src)
        _run_ds_to_universal(ds_to_universal, src, tmp / dst.name, workers, progress=progress)
        (tmp / dst.name / SOURCE_FILE).write_text(json.dumps(fingerprint) + "\n", encoding="utf-8")
        if dst.is_dir():  # made from an earlier save of this tag: stale
            shutil.rmtree(dst)
        (tmp / dst.name).rename(dst)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise UniversalConversionError(
            f"{src}: cannot convert this ZeRO checkpoint to a universal checkpoint "
            f"(DeepSpeed's ds_to_universal: {type(exc).__name__}: {exc}). Resume on the number "
            "of ranks that wrote it, or export the weights with "
            f"`natscale convert zero-to-hf {ckpt_dir} OUT_DIR --tag {tag}` and start a new run "
            "from model.path=OUT_DIR (the optimizer state is then lost)."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def prepare_resume(ckpt_dir: str | Path, tag: str, *, world_size: int, rank: int) -> dict | None:
    """Collective, before the engine is built: is ``ckpt_dir/tag`` loadable on ``world_size`` ranks?

    Returns None when it is (same world size, or not a ZeRO checkpoint). Otherwise rank 0 converts
    it to a universal checkpoint while the others wait, and every rank gets ``{"saved_world_size",
    "load_tag", "path"}``: build the engine with ``load_universal`` and load ``load_tag``. A failed
    conversion raises :class:`UniversalConversionError` on every rank.
    """
    import torch.distributed as dist

    from natscale.checkpoint.safety import UnsafeCheckpointError

    box: list = [None]
    if rank == 0:
        try:
            saved = saved_world_size(CheckpointDir(ckpt_dir).tag_dir(tag))
            if saved is not None and saved != world_size:
                path = convert_to_universal(ckpt_dir, tag)
                box[0] = {"saved_world_size": saved, "load_tag": path.name, "path": str(path)}
        except UniversalConversionError as exc:
            box[0] = {"error": str(exc)}
        except UnsafeCheckpointError as exc:
            box[0] = {"unsafe": [exc.path, exc.what]}
    dist.broadcast_object_list(box, src=0)  # the other ranks wait here for the conversion
    if box[0] is not None and "error" in box[0]:
        raise UniversalConversionError(box[0]["error"])
    if box[0] is not None and "unsafe" in box[0]:
        raise UnsafeCheckpointError(*box[0]["unsafe"])
    return box[0]
