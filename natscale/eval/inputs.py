"""What the files an eval reads hold, so that ``--resume`` notices a model retrained in place.

The config's fingerprint (``natscale.eval.run``) compares paths. This compares contents, cheaply:
the model folder's ``config.json`` and, for every weight file, its size and the SHA-256 of its
first 8 MiB (the header and the first tensors: a retrained model differs there); every questions,
corpus, scripted-trajectories, tool-schema, response-template, prompt and chat-template file,
and the tokenizer's files (``prompt.tokenizer``'s, else the model folder's), by its size and the
SHA-256 of its first 8 MiB as well.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from natscale.config.eval import EvalConfig

HEAD_BYTES = 8 * 2**20
WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
# what a tokenizer folder holds that changes the prompt's tokens (the chat template included)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")  # fmt: skip


def _file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HEAD_BYTES))
    return f"{path.stat().st_size}:{digest.hexdigest()[:16]}"


def _files(folder: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        if (folder / name).is_file():
            digest.update(f"{name}={_file(folder / name)};".encode())
    return digest.hexdigest()[:16]


def _model(folder: Path) -> str:
    names = sorted({p.name for pattern in WEIGHTS for p in folder.glob(pattern) if p.is_file()})
    return _files(folder, ["config.json", *names])


def input_identity(cfg: EvalConfig) -> dict[str, str]:
    """``{field: content digest}`` of the eval's model folder and data files that exist."""
    out: dict[str, str] = {}
    if cfg.model and Path(cfg.model).is_dir():
        out["model"] = _model(Path(cfg.model))
    tokenizer = cfg.prompt.tokenizer or cfg.model
    if tokenizer and Path(tokenizer).is_dir():
        out["tokenizer"] = _files(Path(tokenizer), list(TOKENIZER_FILES))
    named: list[tuple[str, Any]] = [
        *((f"questions[{i}]", p) for i, p in enumerate(cfg.questions)),
        *((f"scripted.trajectories[{i}]", p) for i, p in enumerate(cfg.scripted.trajectories)),
        ("tools.corpus", cfg.tools.corpus),
        ("tools.schemas", cfg.tools.schemas),
        ("prompt.response_template", cfg.prompt.response_template),
        ("prompt.file", cfg.prompt.file),
        ("prompt.chat_template", cfg.prompt.chat_template),
    ]
    for name, path in named:
        if isinstance(path, str) and path and Path(path).is_file():
            out[name] = _file(Path(path))
    return out


def changed_inputs(recorded: Any, cfg: EvalConfig) -> list[str]:
    """The fields whose files hold something else than when ``recorded`` was taken (an eval
    started before natscale recorded them: none)."""
    if not isinstance(recorded, dict):
        return []
    now = input_identity(cfg)
    return [k for k in sorted(recorded) if k in now and recorded[k] != now[k]]
