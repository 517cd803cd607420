"""Model and data presets of the throughput benchmark.

Model presets are Hugging Face configs for random init (no weights are ever downloaded): ``tiny``
(the bundled example Llama, for CPU) and the published shapes of Llama-3.2-1B, Llama-3.2-3B,
Llama-3-8B and Qwen2.5-7B. ``PUBLISHED_PARAMS`` holds the parameter counts their model cards
state; a test checks that the configs reproduce them.

Data presets say how segment lengths and trained-token masks are drawn:
- ``example``: the bundled math ReAct trajectories through ``natscale prepare`` (real tokens);
- ``gsm8k`` / ``hotpotqa``: synthetic agent trajectories whose lengths follow a log-normal
  distribution shaped like the NAT paper's data (GSM8K ReAct traces are short, a few
  calculate steps; HotpotQA traces carry long Wikipedia observations). The medians and spreads
  are assumptions, stated here and in every record, not measurements of the paper's files;
- ``full``: every row one segment of exactly ``seq_len`` tokens, all trained (no padding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Llama-3.2's rope scaling (both the 1B and the 3B config.json carry exactly this)
_LLAMA32_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

_LLAMA3 = {
    "model_type": "llama",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        **_LLAMA3,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_parameters": _LLAMA32_ROPE,
    },
    "llama-3.2-3b": {
        **_LLAMA3,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": True,
        "rope_parameters": _LLAMA32_ROPE,
    },
    "llama-3-8b": {
        **_LLAMA3,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    },
}
# parameter counts from the model cards / safetensors index totals
PUBLISHED_PARAMS = {
    "llama-3.2-1b": 1.24e9,
    "llama-3.2-3b": 3.21e9,
    "llama-3-8b": 8.03e9,
    "qwen2.5-7b": 7.62e9,
}
TINY_CONFIG = REPO / "examples" / "models" / "tiny-llama" / "config.json"
MODEL_NAMES = ("tiny", *MODEL_PRESETS)


def model_config(name: str) -> dict[str, Any]:
    """The HF config dict of a model preset (``use_cache`` off, as the trainer runs it)."""
    import json

    if name == "tiny":
        return json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; one of {', '.join(MODEL_NAMES)}")
    return {**MODEL_PRESETS[name], "use_cache": False}


def write_model_config(name: str, out_dir: Path) -> Path:
    """Write the preset's config.json into ``out_dir`` (for ``model.config``); returns the file."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.json"
    path.write_text(json.dumps(model_config(name), indent=2) + "\n", encoding="utf-8")
    return path


def count_params(name: str) -> int:
    """Parameters of a preset, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = model_config(name)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are yielded once


@dataclass(frozen=True)
class LengthDist:
    """Synthetic agent trajectories: log-normal total length, then alternating turns.

    A trajectory is a prompt (instruction + question, untrained) followed by assistant turns
    (trained) alternating with observations (untrained) until the total length is reached.
    """

    median: int  # tokens per trajectory
    sigma: float  # log-normal shape
    prompt: int  # untrained prompt tokens
    assistant: int  # tokens per assistant turn (Thought + Action)
    observation: int  # tokens per observation
    min_len: int = 32


DATA_PRESETS: dict[str, LengthDist | None] = {
    "example": None,  # natscale prepare on examples/configs/prepare_math.yaml
    # GSM8K ReAct (paper): instruction + question ~150 tokens, 3-6 short calculate steps
    "gsm8k": LengthDist(median=520, sigma=0.35, prompt=150, assistant=60, observation=12),
    # HotpotQA ReAct (paper): search/lookup observations are Wikipedia paragraphs
    "hotpotqa": LengthDist(median=1700, sigma=0.45, prompt=180, assistant=70, observation=250),
    "full": None,  # one trained segment of exactly seq_len per row
}


def data_preset_info(name: str) -> dict[str, Any]:
    if name not in DATA_PRESETS:
        raise ValueError(f"unknown data preset {name!r}; one of {', '.join(DATA_PRESETS)}")
    dist = DATA_PRESETS[name]
    if dist is not None:
        return {"name": name, "kind": "synthetic log-normal lengths (assumed)", **asdict(dist)}
    if name == "example":
        return {"name": name, "kind": "examples/math_react through natscale prepare"}
    return {"name": name, "kind": "full rows: one trained segment of seq_len tokens"}
