"""Which checkpoint a run starts from: checked on rank 0 before any rank loads a byte.

``--resume`` loads the tag that ``checkpoints/latest`` names after checking it the way
``natscale convert`` checks a checkpoint (every rank's model and optimizer shard present and
readable, one world size). The cases:

- ``latest`` names a complete tag: resume from it.
- ``latest`` names a folder that is gone, or there is no ``latest`` but tag folders exist: resume
  from the newest complete tag, and say which and why (incomplete tags passed over are named).
- ``latest`` is empty, or the tag it names is damaged (a shard missing or truncated): stop with
  exit code 2 and name the newest complete tag to pass to ``--resume-from`` (the damaged tag may
  be repairable, e.g. a copy that did not finish, so it is not passed over silently).
- ``--resume-from TAG``: that tag, checked the same way.
- no checkpoint at all (no ``latest``, no tag folder): start at step 1, with a note.

``--fresh`` starts at step 1 in a run directory that holds a previous run: the previous run's
files are first moved (never deleted) into ``RUN_DIR/previous-<UTC time>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from natscale.checkpoint.layout import TAG_RE, CheckpointDir, RunDir, tag_step


class ResumeError(RuntimeError):
    """No checkpoint can be resumed from as asked; the message says which tag to use instead."""


@dataclass
class StartPlan:
    """Rank 0's verdict, broadcast to every rank."""

    tag: str | None = None  # the tag to load; None: start at step 1
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def check_tag(ckpt_dir: Path, tag: str) -> str | None:
    """None when ``ckpt_dir/tag`` is a complete ZeRO checkpoint, else why it is not."""
    from natscale.checkpoint.zero_files import inspect_checkpoint
    from natscale.convert.errors import ConvertError

    tag_dir = CheckpointDir(ckpt_dir).tag_dir(tag)
    if not tag_dir.is_dir():
        return f"{tag_dir} does not exist"
    try:
        found = inspect_checkpoint(ckpt_dir, tag)
    except ConvertError as exc:
        # the checker is shared with `natscale convert`, whose option for another tag is --tag
        return (
            str(exc)
            .replace(" (--tag)", "")
            .replace("convert an earlier tag with --tag", "use an earlier tag")
        )
    except OSError as exc:
        return f"cannot read {tag_dir}: {exc}"
    recorded = CheckpointDir(ckpt_dir).world_file(tag)
    if recorded.is_file():
        try:
            ranks = int(recorded.read_text().strip())
        except (OSError, ValueError):
            ranks = None
        if ranks != found.world_size:
            return (
                f"{recorded} says {ranks} ranks wrote {tag} but its shards are from "
                f"{found.world_size} ranks: files from two runs are mixed in {tag_dir}"
            )
    return None


def _newest_complete(ckpt_dir: Path, skip: set[str]) -> tuple[str | None, list[str]]:
    """(the newest complete tag not in ``skip``, notes on the newer incomplete ones passed over)."""
    passed: list[str] = []
    for tag in reversed(CheckpointDir(ckpt_dir).list_tags()):
        if tag in skip:
            continue
        why = check_tag(ckpt_dir, tag)
        if why is None:
            return tag, passed
        passed.append(f"passed over {tag}, which is incomplete: {why}")
    return None, passed


def _hint(ckpt_dir: Path, bad: str | None) -> str:
    tag, _ = _newest_complete(ckpt_dir, {bad} if bad else set())
    if tag is not None:
        return (
            f"The newest complete checkpoint is {tag}: resume from it with --resume-from {tag}"
            + (
                f" ({bad} is then replaced when the run saves that step again)"
                if bad and bad in CheckpointDir(ckpt_dir).list_tags()
                else ""
            )
            + ", or repair the damaged files."
        )
    return (
        f"No other checkpoint in {ckpt_dir} is complete: repair the files, or start over with "
        "--fresh (the previous run's files are moved to RUN_DIR/previous-<time>/, not deleted)."
    )


def _plan_requested(ckpt_dir: Path, requested: str) -> StartPlan:
    """``--resume-from TAG``: that tag when complete, with a note on newer tags that are kept."""
    why = check_tag(ckpt_dir, requested)
    if why is not None:
        return StartPlan(
            error=f"--resume-from {requested}: the checkpoint is incomplete: {why}. "
            + _hint(ckpt_dir, requested)
        )
    notes = [f"resuming from {requested} (--resume-from)"]
    m = TAG_RE.match(requested)
    newer = [t for t in CheckpointDir(ckpt_dir).list_tags() if m and tag_step(t) > int(m.group(1))]
    if newer:
        notes.append(
            f"{', '.join(newer)} (newer than {requested}) "
            + ("is" if len(newer) == 1 else "are")
            + " kept until this run saves the same step, which replaces it"
        )
    return StartPlan(requested, notes)


def _plan_newest_complete(ckpt_dir: Path, latest: str | None) -> StartPlan:
    """``latest`` is missing or names a folder that is gone: the newest complete tag."""
    why = (
        f"latest names {latest}, which is missing"
        if latest is not None
        else f"{ckpt_dir} has no latest file"
    )
    tag, passed = _newest_complete(ckpt_dir, set())
    if tag is None:
        return StartPlan(
            error=f"no complete checkpoint to resume from: {why}"
            + "".join(f"; {p}" for p in passed)
            + ". Repair the files, or start over with --fresh (the previous run's files are "
            "moved to RUN_DIR/previous-<time>/, not deleted)."
        )
    return StartPlan(tag, [*passed, f"{why}; resuming from {tag}, the newest complete checkpoint"])


def plan_resume(ckpt_dir: str | Path, *, requested: str | None = None) -> StartPlan:
    """Decide (rank 0, no process group needed) which tag ``--resume`` loads; see module doc."""
    ckpt_dir = Path(ckpt_dir)
    if requested is not None:
        return _plan_requested(ckpt_dir, requested)
    latest = CheckpointDir(ckpt_dir).read_latest_text()
    tags = CheckpointDir(ckpt_dir).list_tags() if ckpt_dir.is_dir() else []
    if latest is None and not tags:
        return StartPlan(None, [f"--resume: no checkpoint in {ckpt_dir}; starting at step 1"])
    if latest == "":
        return StartPlan(
            error=f"{CheckpointDir(ckpt_dir).latest_file} is empty (a write that was interrupted), so the "
            "checkpoint to resume from is unknown. " + _hint(ckpt_dir, None)
        )
    if latest is not None and CheckpointDir(ckpt_dir).tag_dir(latest).is_dir():
        why = check_tag(ckpt_dir, latest)
        if why is not None:
            return StartPlan(
                error=f"{latest}, the checkpoint named by {CheckpointDir(ckpt_dir).latest_file}, is incomplete: "
                f"{why}. " + _hint(ckpt_dir, latest)
            )
        return StartPlan(latest, [f"resuming from {latest} (named by latest)"])
    return _plan_newest_complete(ckpt_dir, latest)


def plan_start(
    run_dir: str | Path, *, resume: bool, fresh: bool, requested: str | None
) -> StartPlan:
    """Rank 0: archive for ``--fresh``, choose the tag for ``--resume``; errors go in the plan."""
    run_dir = Path(run_dir)
    try:
        if fresh:
            moved = RunDir(run_dir).archive_previous()
            notes = [f"--fresh: moved the previous run's files to {moved}"] if moved else []
            return StartPlan(None, notes)
        if resume or requested is not None:
            return plan_resume(RunDir(run_dir).checkpoints.root, requested=requested)
        return StartPlan(None, [])
    except OSError as exc:
        return StartPlan(error=f"output_dir {run_dir}: {exc}")


def agree_on_start(
    run_dir: str | Path, *, resume: bool, fresh: bool, requested: str | None, rank: int
) -> StartPlan:
    """Collective: rank 0 decides (:func:`plan_start`), every rank gets the same plan; raises
    :class:`ResumeError` on every rank when there is nothing to resume from as asked."""
    import torch.distributed as dist

    box: list = [None]
    if rank == 0:
        box[0] = plan_start(run_dir, resume=resume, fresh=fresh, requested=requested)
    dist.broadcast_object_list(box, src=0)
    plan: StartPlan = box[0]
    if plan.error is not None:
        raise ResumeError(plan.error)
    return plan
