"""Checkpoints: DeepSpeed's own files plus our client state, with an atomic ``latest``.

Layout of ``RUN_DIR/checkpoints`` (named in ``natscale.checkpoint.layout``)::

    latest                  text file naming the newest complete tag, e.g. "global_step40"
    global_step40/          one DeepSpeed tag: zero_pp_rank_{r}_mp_rank_00_{model,optim}_states.pt
                            and natscale_world_size (how many ranks wrote it)
    zero_to_fp32.py         DeepSpeed's offline converter (written by DeepSpeed)

``latest`` is written by rank 0 (temp file + rename) only after every rank has finished writing
the tag, so a crash mid-save leaves the previous checkpoint in charge. Saving a step whose tag
``latest`` names (a run resumed from an earlier tag reaches that step again) first moves ``latest``
to a complete earlier tag (the one the run resumed from, or its last save) and removes the old
folder: the tag is never rewritten in place. A tag's universal copy (``{tag}_universal``) goes
whenever the tag is saved again or removed. A save that fails on any
rank (disk full, read-only, ...) is agreed on by every rank: the partial tag is removed, ``latest``
stays on the last good tag and every rank raises :class:`CheckpointSaveError`. After a good save,
the tags older than it beyond the newest ``keep_last`` are deleted; tags newer than the one just
saved are never deleted. The client state (in every rank's model-states file) holds the step, the
data cursor, token counters, the non-finite step count and the RNG states of all ranks.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natscale.atomic import atomic_write_text
from natscale.checkpoint.layout import TAG_RE, CheckpointDir, tag_for
from natscale.checkpoint.resume import check_tag

LOW_SPACE_BYTES = 64 * 2**20  # a write that fails with less free than this: the disk is full


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the partial tag is gone, ``latest`` is unchanged."""


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    atomic_write_text(CheckpointDir(ckpt_dir).latest_file, tag)


_FOREIGN_WARNED: set[Path] = set()


def _foreign_folders(tag_dir: Path) -> list[str]:
    """Sub-folders of a tag folder: DeepSpeed writes only files there, so each was put there by
    someone else (an HF export converted into it, say) and is not training's to delete."""
    try:
        return sorted(p.name for p in tag_dir.iterdir() if p.is_dir())
    except OSError:
        return []


def _prune(
    ckpt_dir: Path,
    keep_last: int,
    current: str,
    complete: Callable[[str], bool] | None = None,
) -> list[str]:
    """Delete the tags older than ``current`` (just saved, complete) beyond the newest
    ``keep_last`` complete ones; tags newer than ``current`` are left alone (not this run's to
    judge), and so is a tag folder holding a sub-folder (said once on stderr).

    An incomplete tag (a save killed midway) takes no place among the ``keep_last``: counting it
    deleted the complete checkpoint a run had resumed from and kept one nothing can load. It
    stays until it is older than every kept checkpoint. ``complete`` (tag -> bool) defaults to
    ``resume.check_tag``'s verdict."""
    if complete is None:
        complete = lambda tag: check_tag(ckpt_dir, tag) is None  # noqa: E731
    m = TAG_RE.match(current)
    limit = int(m.group(1)) if m else None
    ckpts = CheckpointDir(ckpt_dir)
    tags = [t for t in ckpts.list_tags() if limit is None or int(TAG_RE.match(t).group(1)) <= limit]
    if current not in tags:  # only a save that just completed may make room
        return []
    kept, start = 0, len(tags)
    while start > 0 and kept < max(keep_last, 1):
        start -= 1
        kept += tags[start] == current or complete(tags[start])
    doomed = []
    for name in tags[:start]:
        foreign = _foreign_folders(ckpts.tag_dir(name)) if name != current else []
        if name == current or foreign:
            if foreign and ckpts.tag_dir(name) not in _FOREIGN_WARNED:
                _FOREIGN_WARNED.add(ckpts.tag_dir(name))
                print(
                    f"natscale: checkpoint.keep_last: kept {ckpts.tag_dir(name)}, which holds "
                    f"{', '.join(f'{n}/' for n in foreign)} (not written by training); move "
                    "that out, then delete the tag folder yourself",
                    file=sys.stderr,
                )
            continue
        _remove_tag(ckpts, name)
        doomed.append(name)
    return doomed


def _own_step_tensors(engine: Any) -> int:
    """Give each parameter's optimizer state its own ``step`` tensor; how many were shared.

    DeepSpeed's universal-checkpoint load (ZeRO-3) sets one ``step`` tensor object on every
    parameter group's state, and torch's Adam adds 1 to it in place once per group: after a
    resume on another number of ranks the bias correction counted 2 steps per step, and every
    checkpoint saved from then on held the shared tensor, so later resumes kept doing so."""
    optimizer = getattr(engine, "optimizer", None)
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    if optimizer is None:
        return 0
    seen: set[int] = set()
    shared = 0
    for state in optimizer.state.values():
        step = state.get("step") if isinstance(state, dict) else None
        if not torch.is_tensor(step):
            continue
        if step.untyped_storage().data_ptr() in seen:
            state["step"] = step.clone()
            shared += 1
        else:
            seen.add(step.untyped_storage().data_ptr())
    return shared


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain values and tensors (checkpoints load weights-only).

    python: ``random.getstate()`` (a tuple of ints); numpy: the legacy global generator's
    ``get_state()`` with its key array as a list of ints; torch/cuda: byte tensors.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (str(kind), key.tolist(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe_write_error(exc: BaseException, where: Path) -> str:
    """One line for a failed write; says "no space left on device" when that is the cause.

    torch.save reports a full disk as a RuntimeError from its zip writer, without the errno, so
    a failed write on a file system with almost no free space counts as a full disk too.
    """
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    code = getattr(exc, "errno", None)
    first = str(exc).splitlines()[0] if str(exc) else repr(exc)
    text = f"{type(exc).__name__}: {first}"
    space = (
        f"{free / 2**20:,.0f} MiB free on the file system of {where}" if free is not None else ""
    )
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < LOW_SPACE_BYTES):
        what = "no space left on device" if code != errno.EDQUOT else "disk quota exceeded"
        return f"{what} ({text}{'; ' + space if space else ''})"
    return f"{text}{' (' + space + ')' if space else ''}"


@contextlib.contextmanager
def _writes_recorded(engine: Any, failures: list[BaseException]) -> Iterator[None]:
    """Inside: DeepSpeed's checkpoint writes on this rank record their error instead of raising.

    A rank that raised out of ``save_checkpoint`` would leave the others waiting in its final
    barrier; recorded, every rank goes through the same collectives and the failure is agreed on
    afterwards. Wrapped: the checkpoint engine's ``save`` and ``makedirs`` and the copy of
    DeepSpeed's recovery script.
    """
    ckpt_engine = engine.checkpoint_engine

    def recorded(fn: Any, kinds: tuple[type[BaseException], ...]) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if failures:  # the tag is lost already: write nothing more
                return None
            try:
                return fn(*args, **kwargs)
            except kinds as exc:
                failures.append(exc)
                return None

        return call

    patched = [
        (ckpt_engine, "save", recorded(ckpt_engine.save, (OSError, RuntimeError))),
        (ckpt_engine, "makedirs", recorded(ckpt_engine.makedirs, (OSError,))),
        (engine, "_copy_recovery_script", recorded(engine._copy_recovery_script, (OSError,))),
    ]
    for obj, name, fn in patched:
        setattr(obj, name, fn)  # an instance attribute, shadowing the method
    try:
        yield
    finally:
        for obj, name, _ in patched:
            with contextlib.suppress(AttributeError):
                delattr(obj, name)


def _write_tag(
    engine: Any, ckpt_dir: Path, tag: str, client_state: dict[str, Any]
) -> list[tuple[int, str]]:
    """Every rank writes its files of ``tag`` (collective); the failed ranks and their errors."""
    import torch.distributed as dist

    failures: list[BaseException] = []
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    state = dict(client_state, rng_states=states)
    with _writes_recorded(engine, failures):
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    # save_checkpoint ends with a barrier: every rank's files of this tag are written (or failed)
    errors: list[Any] = [None] * dist.get_world_size()
    mine = describe_write_error(failures[0], ckpt_dir) if failures else None
    dist.all_gather_object(errors, mine)
    return [(r, e) for r, e in enumerate(errors) if e is not None]


def _complete_tag(ckpt_dir: Path, tag: str, failed: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Rank 0 records the rank count and moves ``latest`` (when no rank failed); every rank gets
    the failures, rank 0's own included."""
    import torch.distributed as dist

    if not failed and dist.get_rank() == 0:
        try:
            # rank 0 may see only its own node's shards (node-local disks): record the rank count
            CheckpointDir(ckpt_dir).world_file(tag).write_text(f"{dist.get_world_size()}\n")
            _write_latest(ckpt_dir, tag)
        except OSError as exc:
            failed = [(0, describe_write_error(exc, ckpt_dir))]
    box: list[Any] = [failed]
    dist.broadcast_object_list(box, src=0)  # rank 0's own latest/record failure, if any
    return box[0]


def _remove_tag(ckpts: CheckpointDir, tag: str) -> None:
    """Delete the folder of ``tag`` and its universal copy (made from it, stale without it)."""
    shutil.rmtree(ckpts.tag_dir(tag), ignore_errors=True)
    shutil.rmtree(ckpts.universal_dir(tag), ignore_errors=True)


def _save_failed(
    ckpts: CheckpointDir, tag: str, failed: list[tuple[int, str]]
) -> CheckpointSaveError:
    """Remove the partial tag (rank 0), wait for every rank; the error that says what happened."""
    import torch.distributed as dist

    if dist.get_rank() == 0 and ckpts.read_latest() != tag:
        _remove_tag(ckpts, tag)
    dist.barrier()
    previous = ckpts.read_latest()
    r, first = failed[0]
    partial = ckpts.tag_dir(tag)
    return CheckpointSaveError(
        f"checkpoint {tag} could not be saved: {first} (rank {r}"
        + (f" and {len(failed) - 1} more" if len(failed) > 1 else "")
        + ")"
        + (
            f". The partial {partial} is still there; "
            if partial.is_dir()
            else f". The partial {partial} was removed; "
        )
        + (
            f"latest names {previous}, the last good checkpoint (continue from it "
            "with --resume once there is room)"
            if previous and previous != tag
            else "there is no earlier checkpoint"
        )
    )


def _clear_for_save(ckpts: CheckpointDir, tag: str, fallback: str | None) -> None:
    """Rank 0, before ``tag`` is written: remove an earlier folder of it (and its universal copy).

    When ``latest`` names ``tag`` (a run resumed from an earlier tag reached that step again),
    ``latest`` first moves to ``fallback``, a complete earlier tag, or is removed when there is
    none; a crash during the save then leaves a complete checkpoint in charge, never a mix of two
    runs' files.
    """
    if ckpts.read_latest_text() == tag:
        if fallback is not None and fallback != tag and ckpts.tag_dir(fallback).is_dir():
            _write_latest(ckpts.root, fallback)
        else:
            ckpts.latest_file.unlink(missing_ok=True)
    _remove_tag(ckpts, tag)


def save(
    engine: Any,
    ckpt_dir: str | Path,
    *,
    step: int,
    client_state: dict[str, Any],
    keep_last: int,
    fallback: str | None = None,
) -> str:
    """Save tag ``global_step{step}`` on all ranks (collective), then move ``latest`` to it.

    fallback: a complete tag older than this step (the last one this run saved or resumed from);
    ``latest`` names it while the step is written when ``latest`` named this step's tag. Raises :class:`CheckpointSaveError` on every rank when any rank failed to write (see the
    module doc); the message names the rank, the error and the tag ``latest`` still names.
    """
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    ckpts = CheckpointDir(ckpt_dir)
    tag = tag_for(step)
    rank = dist.get_rank()
    if rank == 0:
        # an earlier save of this step: one that never completed, or a run resumed from an
        # earlier tag saving this step again
        _clear_for_save(ckpts, tag, fallback)
    dist.barrier()  # no rank writes before the old files are gone
    failed = _complete_tag(ckpt_dir, tag, _write_tag(engine, ckpt_dir, tag, client_state))
    if failed:
        raise _save_failed(ckpts, tag, failed)
    if rank == 0:
        _prune(ckpt_dir, keep_last, tag)
    dist.barrier()
    return tag


def load(
    engine: Any, ckpt_dir: str | Path, *, tag: str | None = None, load_tag: str | None = None
) -> dict[str, Any]:
    """Load ``tag`` (default: the ``latest`` tag) into the engine; restore this rank's RNG; return
    the client state. Check the tag first (natscale.checkpoint.resume does, on rank 0).

    load_tag: the folder to load instead (the universal conversion of ``tag``; the engine must
    then have been built with ``load_universal``). The RNG states are restored only when the
    checkpoint was written by as many ranks as there are now (rank r gets rank r's states).
    Files are loaded weights-only: one that needs anything else raises
    :class:`~natscale.checkpoint.safety.UnsafeCheckpointError` on every rank, before any is read.
    """
    import torch.distributed as dist

    from natscale.checkpoint.safety import check_files, weights_only_loads

    tag = tag or CheckpointDir(ckpt_dir).read_latest()
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint (no valid 'latest' file)")
    # every rank checks every file before the (collective) load: all refuse an unsafe one alike
    check_files(sorted(CheckpointDir(ckpt_dir).tag_dir(load_tag or tag).rglob("*.pt")))
    with weights_only_loads():
        load_path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=load_tag or tag)
    if load_path is None:
        raise FileNotFoundError(f"{ckpt_dir}/{tag}: DeepSpeed found no checkpoint files to load")
    _own_step_tensors(engine)
    states = client_state.get("rng_states") or []
    client_state["rng_restored"] = len(states) == dist.get_world_size()
    if client_state["rng_restored"]:
        set_rng_state(states[dist.get_rank()])
    client_state["tag"] = tag
    return client_state
