"""Where the HF config, generation config and tokenizer of a checkpoint come from, and copying them.

Lookup contract (the trainer writes these next to its checkpoints). Places, in order:

1. ``--config-dir DIR`` if given
2. the tag folder (``CKPT_DIR/<tag>``)
3. ``CKPT_DIR`` (the folder holding ``latest``)
4. ``CKPT_DIR/..`` (the run directory: ``natscale.checkpoint.layout.RunDir``)

In each place the config is ``config.json`` at the top, in ``hf_config/`` or in ``model_config/``
(the trainer's ``RUN_DIR/model_config/``: config, generation config and tokenizer together);
``generation_config.json`` is taken from the same folder as the config when present (else
derived from the config). The tokenizer is the first folder with ``tokenizer_config.json`` or
``tokenizer.json``: the top of a place, then its ``tokenizer/``, ``model_config/``, ``hf_config/``.
A missing config is an error naming every folder tried; a missing tokenizer is a warning (the
weights are still usable). The config is written as found, with ``dtype`` set to the export's.

The tokenizer is copied whole: every file of its folder (vocabulary files of any name, e.g.
``emoji.json``, chat templates) and its ``additional_chat_templates/`` (the named templates
transformers 5 saves), so the export loads as the folder does. Left out: the config files
(written above), hidden entries (natscale's marker), weights and checkpoint files, a run's or a
checkpoint folder's own files, code, model cards and licences, and every other sub-folder (no
tokenizer reads one), so a tokenizer found at the top of a run directory or a model folder
brings nothing else with it.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

from natscale.checkpoint.layout import LATEST, MODEL_CONFIG, WORLD_FILE, CheckpointDir, RunDir
from natscale.convert.errors import ConvertError

# hf_config/ and tokenizer/: what other tools put next to a checkpoint
CONFIG_SUBDIRS = ("hf_config", MODEL_CONFIG)
TOKENIZER_SUBDIRS = ("tokenizer", MODEL_CONFIG, "hf_config")
TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json")
# The one sub-folder a tokenizer has: the named chat templates transformers 5 saves beside
# chat_template.jinja (e.g. Command-R's tool_use.jinja, rag.jinja)
TOKENIZER_SUBFOLDERS = ("additional_chat_templates",)
# What a tokenizer's folder may hold that is not the tokenizer: the config files (write_assets
# writes them itself), weights and checkpoint files, what natscale and DeepSpeed write beside a
# checkpoint (a run directory's files, `latest`, zero_to_fp32.py, natscale_world_size), code,
# model cards and licences. Names starting with "." (natscale's marker, .git) are left out too.
NOT_TOKENIZER = (
    "config.json", "generation_config.json",
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx",
    "*.index.json", "adapter_*",
    *RunDir.ENTRIES, LATEST, WORLD_FILE, "*.py", "*.log", "*.md", "LICENSE*", "verify.json",
)  # fmt: skip


@dataclass(frozen=True)
class HfAssets:
    config_dir: Path  # folder with config.json
    tokenizer_dir: Path | None
    searched: tuple[Path, ...]  # places tried, in order


def search_places(ckpt_root: Path, tag_dir: Path, config_dir: Path | None) -> list[Path]:
    ckpts = CheckpointDir(ckpt_root)
    places = [config_dir] if config_dir is not None else []
    places += [tag_dir, ckpts.root, ckpts.run_dir.root]
    unique: list[Path] = []
    for p in places:
        if p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique


def find_assets(ckpt_root: Path, tag_dir: Path, config_dir: Path | None = None) -> HfAssets:
    """Locate config.json and the tokenizer; raise ConvertError naming the places if no config."""
    if config_dir is not None and not config_dir.is_dir():
        raise ConvertError(f"--config-dir {config_dir} does not exist or is not a directory")
    places = search_places(ckpt_root, tag_dir, config_dir)
    candidates = [c for p in places for c in (p, *(p / sub for sub in CONFIG_SUBDIRS))]
    found = next((c for c in candidates if (c / "config.json").is_file()), None)
    if found is None:
        tried = "\n  ".join(str(c / "config.json") for c in candidates)
        raise ConvertError(
            "no config.json for this checkpoint; looked for:\n  " + tried + "\n"
            "Pass --config-dir with the model's Hugging Face config (the folder you trained from)."
        )
    tok_candidates = [c for p in places for c in (p, *(p / sub for sub in TOKENIZER_SUBDIRS))]
    tokenizer = next(
        (c for c in tok_candidates if any((c / m).is_file() for m in TOKENIZER_MARKERS)), None
    )
    return HfAssets(config_dir=found, tokenizer_dir=tokenizer, searched=tuple(places))


def load_config(assets: HfAssets):
    """The model's ``PretrainedConfig``; ConvertError if transformers cannot read it."""
    from transformers import AutoConfig

    from natscale.model.hf_config import CONFIG_ERRORS, config_problem

    try:
        return AutoConfig.from_pretrained(assets.config_dir)
    except (OSError, *CONFIG_ERRORS) as exc:
        path = assets.config_dir / "config.json"
        raise ConvertError(f"{path}: not a usable HF config: {config_problem(exc)}") from exc


def write_assets(assets: HfAssets, config, out_dir: Path, dtype) -> list[str]:
    """Write config.json (``dtype`` set), generation_config.json and the tokenizer's files.

    Returns the names written.
    """
    from transformers import GenerationConfig

    config.dtype = dtype
    config.save_pretrained(out_dir)
    written = ["config.json"]
    if (assets.config_dir / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(assets.config_dir)
    else:
        gen = GenerationConfig.from_model_config(config)
    gen.save_pretrained(out_dir)
    written.append("generation_config.json")
    if assets.tokenizer_dir is not None:
        for src in tokenizer_entries(assets.tokenizer_dir):
            if src.is_dir():
                shutil.copytree(src, out_dir / src.name)
            else:
                shutil.copy2(src, out_dir / src.name)
            written.append(src.name)
    return written


def tokenizer_entries(folder: Path) -> list[Path]:
    """The files and folders of ``folder`` that belong to the tokenizer in it (module doc), sorted
    by name; links are followed (an HF cache snapshot is a folder of links)."""
    found = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in NOT_TOKENIZER):
            continue
        if path.is_file() or (path.is_dir() and name in TOKENIZER_SUBFOLDERS):
            found.append(path)
    return found
