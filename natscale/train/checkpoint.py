"""Checkpoints: DeepSpeed's own files plus our client state, with an atomic ``latest``.

Layout of ``RUN_DIR/checkpoints``::

    latest                  text file naming the newest complete tag, e.g. "global_step40"
    global_step40/          one DeepSpeed tag: zero_pp_rank_{r}_mp_rank_00_{model,optim}_states.pt
    zero_to_fp32.py         DeepSpeed's offline converter (written by DeepSpeed)

``latest`` is written by rank 0 (temp file + rename) only after every rank has finished writing
the tag, so a crash mid-save leaves the previous checkpoint in charge. The newest ``keep_last``
tags are kept. The client state (in every rank's model-states file) holds the step, the data
cursor, token counters, the non-finite step count and the RNG states of all ranks.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

TAG_RE = re.compile(r"^global_step(\d+)$")
WORLD_FILE = "natscale_world_size"  # in each tag folder: how many ranks wrote it (universal.py)


def tag_for(step: int) -> str:
    return f"global_step{step}"


def read_latest(ckpt_dir: str | Path) -> str | None:
    """The tag named by ``ckpt_dir/latest`` (None when there is no complete checkpoint)."""
    latest = Path(ckpt_dir) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8").strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".latest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(tag)
    os.replace(tmp, ckpt_dir / "latest")


def _prune(ckpt_dir: Path, keep_last: int, current: str) -> list[str]:
    tags = sorted(
        (int(m.group(1)), p.name)
        for p in ckpt_dir.iterdir()
        if p.is_dir() and (m := TAG_RE.match(p.name))
    )
    doomed = [name for _, name in tags[:-keep_last] if name != current]
    for name in doomed:
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)
        shutil.rmtree(ckpt_dir / f"{name}_universal", ignore_errors=True)  # see universal.py
    return doomed


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


def save(
    engine: Any, ckpt_dir: str | Path, *, step: int, client_state: dict[str, Any], keep_last: int
) -> str:
    """Save tag ``global_step{step}`` on all ranks (collective), then move ``latest`` to it."""
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    state = dict(client_state, rng_states=states)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    # save_checkpoint ends with a barrier: every rank's files of this tag are written
    if dist.get_rank() == 0:
        # rank 0 may see only its own node's shards (node-local disks): say how many ranks wrote it
        (ckpt_dir / tag / WORLD_FILE).write_text(f"{dist.get_world_size()}\n")
        _write_latest(ckpt_dir, tag)
        _prune(ckpt_dir, keep_last, tag)
    dist.barrier()
    return tag


def load(engine: Any, ckpt_dir: str | Path, *, load_tag: str | None = None) -> dict[str, Any]:
    """Load the ``latest`` tag into the engine; restore this rank's RNG; return the client state.

    load_tag: the folder to load instead (the universal conversion of ``latest``; the engine must
    then have been built with ``load_universal``). The RNG states are restored only when the
    checkpoint was written by as many ranks as there are now (rank r gets rank r's states).
    Files are loaded weights-only: one that needs anything else raises
    :class:`~natscale.checkpoint_safety.UnsafeCheckpointError` on every rank, before any is read.
    """
    import torch.distributed as dist

    from natscale.checkpoint_safety import check_files, weights_only_loads

    tag = read_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint (no valid 'latest' file)")
    # every rank checks every file before the (collective) load: all refuse an unsafe one alike
    check_files(sorted((Path(ckpt_dir) / (load_tag or tag)).rglob("*.pt")))
    with weights_only_loads():
        load_path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=load_tag or tag)
    if load_path is None:
        raise FileNotFoundError(f"{ckpt_dir}/{tag}: DeepSpeed found no checkpoint files to load")
    states = client_state.get("rng_states") or []
    client_state["rng_restored"] = len(states) == dist.get_world_size()
    if client_state["rng_restored"]:
        set_rng_state(states[dist.get_rank()])
    client_state["tag"] = tag
    return client_state
