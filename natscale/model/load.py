"""Load a Hugging Face causal LM for packed training.

The model comes from a local directory (fine-tuning) or from a config (random init). Under ZeRO-3
the caller keeps a ``transformers.integrations.HfDeepSpeedConfig`` alive while this runs, so the
model is built inside ``deepspeed.zero.Init`` and each rank only ever holds its partition.

Packed rows are attended block-causally (a token sees only its own segment):
- ``flash_attention_2``: transformers turns restarting ``position_ids`` of a flattened [1, T] batch
  into varlen ``cu_seqlens`` (the model is fed one flattened row; see natscale.model.nat_lm);
- ``flex_attention`` (CUDA without flash-attn): transformers builds a FlexAttention block mask
  with one document per segment from the restarting ``position_ids``;
- ``sdpa`` / ``eager``: transformers builds a block-diagonal causal mask from restarting
  ``position_ids`` -- but only when ``attention_mask`` is None *and* no KV cache exists. Since
  transformers 5 creates a cache whenever ``use_cache`` is true, even in training, ``use_cache`` is
  forced off here; otherwise segments silently attend to each other.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from natscale.checkpoint.layout import model_folder_hint
from natscale.config.run import ModelSection
from natscale.model.hf_config import CONFIG_ERRORS, config_problem

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class ModelSourceError(ValueError):
    """The model directory or config is missing or unusable."""


def config_path(section: ModelSection) -> Path:
    """The config.json that describes the model (inside model.path, or model.config)."""
    src = Path(section.path if section.path is not None else section.config)  # type: ignore[arg-type]
    key = "model.path" if section.path is not None else "model.config"
    hint = ""
    if src.is_dir():
        hint = model_folder_hint(src)
        src = src / "config.json"
    if not src.is_file():
        raise ModelSourceError(
            f"{key}: {src} not found; give a Hugging Face model directory or config.json{hint}"
        )
    return src


def load_hf_config(section: ModelSection) -> Any:
    """The model's ``PretrainedConfig``, with ``use_cache`` off (see the module docstring)."""
    from transformers import AutoConfig

    path = config_path(section)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelSourceError(f"{path}: not a usable Hugging Face config ({exc})") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        found = "no 'model_type' key" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise ModelSourceError(
            f"{path}: not a usable Hugging Face config ({found}); a model's config.json is a JSON "
            'object with its "model_type" (e.g. "llama") and sizes'
        )
    try:
        config = AutoConfig.for_model(data.pop("model_type"), **data)
    except CONFIG_ERRORS as exc:
        raise ModelSourceError(
            f"{path}: not a usable Hugging Face config ({config_problem(exc)}); correct the file "
            "or give the model's own config.json"
        ) from exc
    config.use_cache = False
    return config


def has_weights(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))


def damaged_weights(model_dir: str | Path) -> str | None:
    """Why a ``*.safetensors`` file of ``model_dir`` cannot be loaded (None: all can).

    Only each file's header is read: safetensors checks that it describes the whole file, so a
    truncated file (an interrupted download or copy) is found here, not by a traceback from
    ``from_pretrained``.
    """
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            return (
                f"{path} ({path.stat().st_size:,} bytes) is damaged: {exc}. The file is truncated "
                "or corrupt (an interrupted download, save or copy); copy it again"
            )
    return None


# the class attribute of an HF model that says it implements each backend (eager: all do)
_SUPPORT_FLAGS = {
    "flash_attention_2": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
    "sdpa": "_supports_sdpa",
}


def text_config(config: Any) -> Any:
    """The config of the language model: the config itself, or a multimodal model's text config
    (Gemma 3's ``vocab_size`` and ``hidden_size`` live in ``config.text_config``)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_class(config: Any) -> type | None:
    """The ``*ForCausalLM`` class transformers builds for ``config`` (None if it has none)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except (KeyError, AttributeError):
        return None


def supports_attn(cls: type | None, implementation: str) -> bool:
    """Whether the model class implements an attention backend (unknown class: assumed)."""
    flag = _SUPPORT_FLAGS.get(implementation)
    return cls is None or flag is None or bool(getattr(cls, flag, True))


def sdpa_or_eager(config: Any) -> str:
    """sdpa, or eager for a model class without it (Gemma 2): for unpacked batches, where both
    are exact (export verification, selftest)."""
    return "sdpa" if supports_attn(model_class(config), "sdpa") else "eager"


def choose_attn_implementation(
    requested: str,
    device_type: str,
    *,
    flash_attn_installed: bool | None = None,
    model_cls: type | None = None,
) -> str:
    """The attention backend for packed rows.

    ``auto``: flash_attention_2 on CUDA when flash-attn is installed; else flex_attention on CUDA
    (transformers builds a FlexAttention document mask from the restarting ``position_ids``, so
    packed rows never fall back to a dense masked SDPA on GPU); sdpa on CPU, where
    flex_attention is slow to compile and crashes with 4D masks (docs/architecture.md, "Packed attention").
    Where ``model_cls`` does not implement that one (Gemma 2 has no sdpa), the next that it does,
    down to eager; a backend asked for by name that it lacks is an error.
    """
    if flash_attn_installed is None:
        flash_attn_installed = importlib.util.find_spec("flash_attn") is not None
    if requested != "auto":
        if requested == "flash_attention_2" and not flash_attn_installed:
            raise ModelSourceError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package "
                "(pip install 'natscale[gpu]'); use flex_attention, sdpa or auto"
            )
        if not supports_attn(model_cls, requested):
            name = model_cls.__name__ if model_cls is not None else "the model"
            raise ModelSourceError(
                f"model.attn_implementation: {name} does not implement {requested}; "
                "use auto (the fastest it implements) or eager"
            )
        return requested
    if device_type == "cuda":
        order = ["flash_attention_2"] if flash_attn_installed else []
        order += ["flex_attention", "sdpa"]
    else:
        order = ["sdpa"]
    return next((a for a in order if supports_attn(model_cls, a)), "eager")


def build_causal_lm(
    section: ModelSection, *, precision: str, attn_implementation: str, seed: int
) -> torch.nn.Module:
    """Build the HF model (under zero.Init when the caller enabled ZeRO-3), ready for training."""
    from transformers import AutoModelForCausalLM

    config = load_hf_config(section)
    dtype = DTYPES[precision]
    # random init is drawn from rank 0's generator (zero.Init broadcasts it); seed it the same way
    # everywhere so the initial weights do not depend on the world size
    torch.manual_seed(seed)
    if section.path is not None:
        if not has_weights(section.path):
            raise ModelSourceError(
                f"model.path: {section.path} has no *.safetensors or pytorch_model*.bin weights; "
                "for random init use model.config instead"
            )
        model = AutoModelForCausalLM.from_pretrained(
            section.path, config=config, dtype=dtype, attn_implementation=attn_implementation
        )
    else:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    model.config.use_cache = False
    if section.activation_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model.train()
    return model
