"""Every path of a run directory and of its checkpoint folder, named once.

Layout of ``RUN_DIR`` (the run config's ``output_dir``)::

    checkpoints/                  CheckpointDir: DeepSpeed checkpoints
      latest                        text file naming the newest complete tag, e.g. "global_step40"
      global_step40/                one DeepSpeed tag: zero_pp_rank_{r}_mp_rank_00_*_states.pt
        natscale_world_size           how many ranks wrote the tag
      global_step40_universal/      the tag as a universal checkpoint (resume on another world size)
    metrics.jsonl                 one JSON object per optimizer step (rank 0)
    summary.json                  the run's summary, written when it stops
    tensorboard/                  TensorBoard event files
    hf/                           the exported Hugging Face model (weights + config + tokenizer)
    plots/                        PNG curves (``natscale plot``)
    config.yaml                   the resolved run config
    ds_config.json                the DeepSpeed config the engine was built with
    model_config/                 HF config + generation config + tokenizer, no weights
    previous-<UTC time>/          an earlier run's files, moved aside by ``--fresh``

Only names and paths live here (no I/O beyond reading ``latest`` and listing tags), so every
module that touches a run directory can import it cheaply.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

TAG_RE = re.compile(r"^global_step(\d+)$")
LATEST = "latest"
WORLD_FILE = "natscale_world_size"  # in each tag folder: how many ranks wrote it
UNIVERSAL_SUFFIX = "_universal"
MODEL_CONFIG = "model_config"  # RUN_DIR/model_config: HF config + tokenizer, no weights


def spelled_out(path: Path) -> Path:
    """``path`` as written, or made absolute when it ends in ``.`` or ``..``, whose ``name`` and
    ``parent`` as written are not the folder's (``Path(".").parent`` is ``.``, its name "")."""
    return Path(os.path.abspath(path)) if path.name in ("", "..") else path


def tag_for(step: int) -> str:
    return f"global_step{step}"


def tag_step(tag: str) -> int:
    """The step of a ``global_step{N}`` tag."""
    return int(TAG_RE.match(tag).group(1))


def universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


@dataclass(frozen=True)
class CheckpointDir:
    """``RUN_DIR/checkpoints`` (or any folder DeepSpeed's ``save_checkpoint`` wrote)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def latest_file(self) -> Path:
        return self.root / LATEST

    def tag_dir(self, tag: str) -> Path:
        return self.root / tag

    def universal_dir(self, tag: str) -> Path:
        """Where the universal conversion of ``tag`` lives (``{tag}_universal``)."""
        return self.root / universal_tag(tag)

    def world_file(self, tag: str) -> Path:
        return self.root / tag / WORLD_FILE

    @property
    def run_dir(self) -> RunDir:
        """The run directory holding this folder (its parent, also for a root of ``.``)."""
        return RunDir(spelled_out(self.root).parent)

    def read_latest(self) -> str | None:
        """The tag named by ``latest`` (None when there is no complete checkpoint)."""
        if not self.latest_file.is_file():
            return None
        tag = self.read_latest_text()  # a damaged file (not UTF-8) names no tag, no traceback
        return tag if tag and "\x00" not in tag and self.tag_dir(tag).is_dir() else None

    def read_latest_text(self) -> str | None:
        """What ``latest`` says, stripped ("" when empty); None when there is no such file."""
        if not self.latest_file.is_file():
            return None
        return self.latest_file.read_text(encoding="utf-8", errors="replace").strip()

    def list_tags(self) -> list[str]:
        """The ``global_step{N}`` folders, oldest step first (complete or not)."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p.name) for p in self.root.iterdir() if (m := TAG_RE.match(p.name))
        ]
        return [name for _, name in sorted(found) if self.tag_dir(name).is_dir()]


@dataclass(frozen=True)
class RunDir:
    """A training run's output directory; see the module doc for what each path holds."""

    root: Path

    # what a run writes into its output_dir; --fresh moves these aside
    ENTRIES = (
        "checkpoints",
        "metrics.jsonl",
        "summary.json",
        "tensorboard",
        "hf",
        "plots",
        "config.yaml",
        "ds_config.json",
        MODEL_CONFIG,
    )

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.root / "checkpoints")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ds_config(self) -> Path:
        return self.root / "ds_config.json"

    @property
    def model_config(self) -> Path:
        return self.root / MODEL_CONFIG

    def archive_previous(self) -> Path | None:
        """Move a previous run's files (:attr:`ENTRIES`) into ``previous-<UTC time>/``; None if
        there were none. Nothing is deleted."""
        present = [name for name in self.ENTRIES if (self.root / name).exists()]
        if not present:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.root / f"previous-{stamp}"
        n = 1
        while dest.exists():
            n += 1
            dest = self.root / f"previous-{stamp}-{n}"
        dest.mkdir()
        for name in present:
            (self.root / name).rename(dest / name)
        return dest


def model_folder_hint(folder: str | Path) -> str:
    """For an error about ``folder`` given where an HF model folder belongs: what it is instead
    (a training run directory, DeepSpeed checkpoints) and what to give; "" otherwise."""
    run = RunDir(folder)
    if (run.hf / "config.json").is_file():
        return f". It is a training run directory; its HF export is {run.hf}"
    ckpts = run.checkpoints if run.checkpoints.root.is_dir() else CheckpointDir(folder)
    if ckpts.list_tags() or ckpts.read_latest_text() is not None:
        return (
            f". It holds DeepSpeed checkpoints; export them first with `natscale convert "
            f"zero-to-hf {ckpts.root} OUT_DIR` and give OUT_DIR"
        )
    return ""
