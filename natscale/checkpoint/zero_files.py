"""Find and check a DeepSpeed ZeRO checkpoint before anything reads its tensors.

A ZeRO checkpoint directory (``CKPT_DIR``) holds a ``latest`` file naming the newest tag and one
folder per tag. A tag folder holds, per data-parallel rank r (``mp_rank_00``: no tensor parallel):

- ZeRO-1/2: ``mp_rank_00_model_states.pt`` (once) and ``zero_pp_rank_{r}_mp_rank_00_optim_states.pt``
- ZeRO-3:   ``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` and ``..._optim_states.pt`` per rank

The fp32 master weights live in the optimizer files, split over the ranks. Everything here only
unpickles the small metadata (files are memory-mapped, and loaded weights-only: see
``natscale.checkpoint.safety``) so that every input problem — an unknown
tag, a missing or truncated rank file, files from two different world sizes — is reported before
the conversion writes a byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natscale.checkpoint.layout import CheckpointDir, spelled_out
from natscale.checkpoint.safety import UnsafeCheckpointError, load_weights_only
from natscale.convert.errors import ConvertError

# bf16 runs prefix the optimizer files with "bf16_"
_OPTIM_RE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_MODEL_RE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
ZERO2_MODEL_FILE = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class ZeroCheckpoint:
    """A checked ZeRO checkpoint: which files to read and what the run looked like."""

    root: Path  # the folder holding `latest` and the tag folders
    tag: str
    tag_dir: Path
    stage: int  # 1, 2 or 3
    world_size: int  # data-parallel ranks that saved it
    model_files: list[Path]  # one (ZeRO-1/2) or one per rank (ZeRO-3), rank order
    optim_files: list[Path]  # one per rank, rank order
    train_dtype: str  # "bf16" | "fp16" | "fp32", from the saved DeepSpeed config
    global_steps: int | None


def load_metadata_file(path: Path) -> dict[str, Any]:
    """Unpickle a DeepSpeed ``.pt`` file memory-mapped (tensors stay on disk until touched).

    Weights-only: a file that needs anything but tensors, plain values and the allowed DeepSpeed
    types raises :class:`~natscale.checkpoint.safety.UnsafeCheckpointError` (nothing of it runs).
    """
    try:
        return load_weights_only(path, map_location="cpu", mmap=True)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # torch raises RuntimeError / EOFError / UnpicklingError here
        if isinstance(exc, FileNotFoundError) or not path.exists():
            gone = "its tag folder" if not path.parent.is_dir() else "the file"
            raise ConvertError(
                f"cannot read {path}: {gone} disappeared while it was read (a running training "
                "job prunes its older checkpoints as it saves new ones); convert a tag the job "
                "keeps with --tag, or convert once the job has stopped."
            ) from exc
        size = path.stat().st_size
        raise ConvertError(
            f"cannot read {path} ({size} bytes): {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "The file is truncated or corrupt (an interrupted save, or a copy that did not finish); "
            "re-copy it, or convert an earlier tag with --tag."
        ) from exc


def resolve_tag(ckpt_dir: Path, tag: str | None) -> tuple[Path, str, Path]:
    """Return (root, tag, tag_dir). ``ckpt_dir`` may also be a tag folder itself."""
    if not ckpt_dir.is_dir():
        raise ConvertError(f"checkpoint directory {ckpt_dir} does not exist or is not a directory")
    latest = CheckpointDir(ckpt_dir).latest_file
    if tag is None and optim_shard_ranks(ckpt_dir) and not latest.exists():
        named = spelled_out(ckpt_dir)  # the user pointed at the tag folder (`.` too)
        return named.parent, named.name, ckpt_dir
    if tag is None:
        if not latest.is_file():
            tags = available_tags(ckpt_dir)
            raise ConvertError(
                f"{ckpt_dir} is not a DeepSpeed checkpoint directory: it has no 'latest' file"
                + (f"; pass one of its tags with --tag: {', '.join(tags)}" if tags else "")
                + ". Point at the folder that engine.save_checkpoint() wrote (it holds 'latest')."
            )
        tag = CheckpointDir(ckpt_dir).read_latest_text() or ""  # damaged (not UTF-8): no tag
        if not tag:
            tags = available_tags(ckpt_dir)
            raise ConvertError(f"{latest} is empty; pass the tag with --tag ({', '.join(tags)})")
    tag_dir = CheckpointDir(ckpt_dir).tag_dir(tag)
    if not tag_dir.is_dir():
        known = ", ".join(available_tags(ckpt_dir)) or "none"
        raise ConvertError(
            f"unknown tag {tag!r}: {tag_dir} does not exist (tags in {ckpt_dir}: {known})"
        )
    return ckpt_dir, tag, tag_dir


def available_tags(ckpt_dir: Path) -> list[str]:
    """Sub-folders of ``ckpt_dir`` that hold ZeRO optimizer files, for messages: unchecked (a
    tag folder's own problems are reported when it is converted), unreadable ones left out."""
    found = []
    for path in ckpt_dir.iterdir():
        try:
            if path.is_dir() and optim_shard_ranks(path):
                found.append(path.name)
        except OSError:
            continue
    return sorted(found)


def optim_shard_ranks(folder: Path) -> set[int]:
    """Ranks that have a ZeRO optimizer file in ``folder`` (unchecked; see inspect_checkpoint)."""
    return {int(m.group(1)) for p in folder.iterdir() if (m := _OPTIM_RE.match(p.name))}


def _rank_files(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    """rank -> file for files named by ``pattern``; model-parallel files are refused."""
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m is None:
            continue
        if int(m.group(2)) != 0:
            raise ConvertError(
                f"{path}: tensor/pipeline-parallel checkpoints (mp_rank > 0) are not supported; "
                "convert with DeepSpeed's ds_to_universal.py first"
            )
        rank = int(m.group(1))
        if rank in found:
            raise ConvertError(
                f"world-size mismatch in {folder}: two files for rank {rank} ({found[rank].name}, "
                f"{path.name}); files from two different runs are mixed in this folder"
            )
        found[rank] = path
    return found


def _check_ranks(kind: str, files: dict[int, Path], world_size: int, tag_dir: Path) -> list[Path]:
    missing = [r for r in range(world_size) if r not in files]
    extra = sorted(r for r in files if r >= world_size)
    if missing:
        prefix = "bf16_" if any(p.name.startswith("bf16_") for p in files.values()) else ""
        names = ", ".join(f"{prefix}zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in missing)
        raise ConvertError(
            f"missing rank shard(s) in {tag_dir}: {names}. The checkpoint was saved by "
            f"{world_size} data-parallel ranks but only ranks {sorted(files)} left {kind} files: "
            "a rank failed while saving or the copy is incomplete. Use another tag (--tag) or copy "
            "the missing files."
        )
    if extra:
        raise ConvertError(
            f"world-size mismatch in {tag_dir}: {kind} files exist for ranks 0..{max(files)} but the "
            f"checkpoint says it was saved by {world_size} data-parallel ranks. Files from an "
            "earlier save with more ranks were left in this folder; remove "
            + ", ".join(files[r].name for r in extra)
            + " (or save to a fresh tag)."
        )
    return [files[r] for r in range(world_size)]


def _partition_count(optim_state: dict, path: Path) -> tuple[int, int]:
    """(zero stage, data-parallel world size) from one rank's optimizer file."""
    osd = optim_state.get("optimizer_state_dict")
    if not isinstance(osd, dict) or "zero_stage" not in osd or "partition_count" not in osd:
        raise ConvertError(
            f"{path} is not a ZeRO optimizer state file (no zero_stage / partition_count); "
            "only ZeRO stage 1-3 checkpoints can be converted"
        )
    count = osd["partition_count"]
    world = max(count) if isinstance(count, list | tuple) else int(count)
    return int(osd["zero_stage"]), world


def _train_dtype(ds_config: dict | None) -> str:
    cfg = ds_config or {}
    if (cfg.get("bf16") or cfg.get("bfloat16") or {}).get("enabled") is True:
        return "bf16"
    if (cfg.get("fp16") or {}).get("enabled") is True:
        return "fp16"
    return "fp32"


def inspect_checkpoint(ckpt_dir: str | Path, tag: str | None = None) -> ZeroCheckpoint:
    """Check a ZeRO checkpoint's files and return what to read; raise ConvertError if unusable."""
    root, tag, tag_dir = resolve_tag(Path(ckpt_dir), tag)
    optim = _rank_files(tag_dir, _OPTIM_RE)
    if not optim:
        raise ConvertError(
            f"{tag_dir} is not a DeepSpeed ZeRO checkpoint: no zero_pp_rank_*_optim_states.pt files "
            f"(found: {', '.join(sorted(p.name for p in tag_dir.iterdir())[:8]) or 'nothing'})"
        )
    stages, worlds = set(), set()
    for path in optim.values():
        stage, world = _partition_count(load_metadata_file(path), path)
        stages.add(stage)
        worlds.add(world)
    if len(stages) > 1 or len(worlds) > 1:
        raise ConvertError(
            f"world-size mismatch in {tag_dir}: the optimizer files disagree (ZeRO stages "
            f"{sorted(stages)}, data-parallel world sizes {sorted(worlds)}); files from two "
            "different runs are mixed in this folder"
        )
    stage, world_size = stages.pop(), worlds.pop()
    optim_files = _check_ranks("optim", optim, world_size, tag_dir)
    if stage == 3:
        model_files = _check_ranks("model", _rank_files(tag_dir, _MODEL_RE), world_size, tag_dir)
    else:
        model_files = [tag_dir / ZERO2_MODEL_FILE]
        if not model_files[0].is_file():
            raise ConvertError(f"{model_files[0]} is missing (ZeRO-{stage} keeps one model file)")
    states = [load_metadata_file(p) for p in model_files]
    saved_world = states[0].get("dp_world_size")
    if saved_world is not None and int(saved_world) != world_size:
        raise ConvertError(
            f"world-size mismatch in {tag_dir}: {model_files[0].name} was saved with data-parallel "
            f"world size {saved_world} but the optimizer files were saved by {world_size} ranks"
        )
    return ZeroCheckpoint(
        root=root,
        tag=tag,
        tag_dir=tag_dir,
        stage=stage,
        world_size=world_size,
        model_files=model_files,
        optim_files=optim_files,
        train_dtype=_train_dtype(states[0].get("ds_config")),
        global_steps=states[0].get("global_steps"),
    )
