"""Which model families natscale has checked for packed training, and which it refuses.

natscale trains packed rows only: several segments share a row, restarting ``position_ids`` mark
them, and transformers' attention must keep each token inside its segment. That holds for the
families in :data:`CHECKED`: ``tests/model/test_architectures.py`` compares, for each of them, a
packed row's last hidden states, loss and gradients with the HF model's own on each segment
alone. It does not hold for :data:`PACKING_LEAKS` (measured with transformers 5.25 on CPU, the
same test's ``test_families_whose_packed_rows_leak_still_leak``): their positions or attention
biases come from the attention mask, or their recurrent layers (state-space, linear attention,
short convolutions) carry state from one segment into the next, so a segment sees the ones
before it in its row, silently.
"""

from __future__ import annotations

from typing import Any

from natscale.model.load import text_config

CHECKED = frozenset(
    {
        "apertus", "apertus1p5_text", "arcee", "aria_text", "bitnet", "codegen", "cohere",
        "cohere2", "cohere2_moe", "cwm", "deepseek_v2", "deepseek_v3", "deepseek_v32",
        "diffllama", "doge", "dots1", "ergo", "ernie4_5", "ernie4_5_moe", "exaone",
        "exaone4", "exaone_moe", "falcon", "flex_olmo", "flint", "gemma", "gemma2",
        "gemma3", "gemma3_text", "gemma4", "gemma4_text", "glm", "glm4", "glm4_moe", "gpt2",
        "gpt_bigcode", "gpt_neo", "gpt_neox", "gpt_neox_japanese", "gptj", "granite",
        "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "helium",
        "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hyperclovax", "internlm3",
        "iquestcoder", "jais2", "jetmoe", "laguna", "llama", "llama4_text", "mellum",
        "mimo_v2_flash", "minicpm3", "minicpm5_moe", "minimax_m2", "ministral",
        "ministral3", "mistral", "mixtral", "nanochat", "nemotron", "olmo", "olmo2",
        "olmo3", "olmoe", "param2moe", "persimmon", "phi", "phi3", "phimoe", "qwen2",
        "qwen2_moe", "qwen3", "qwen3_moe", "sarvam_moe", "seed_oss", "smollm3",
        "solar_open", "stablelm", "starcoder2", "vaultgemma",
    }
)  # fmt: skip

_RECURRENT = "its recurrent (state-space) layers carry their state into the next segment"
_LINEAR = (
    "its linear-attention layers (Gated DeltaNet and kin) carry their state into the next segment"
)
_CONV = "its short convolutions reach into the end of the segment before"
PACKING_LEAKS = {
    "opt": "its learned positions come from the attention mask, not position_ids",
    "bloom": "its ALiBi biases come from the attention mask, not position_ids",
    "mpt": "its ALiBi biases ignore segment boundaries",
    "gpt_oss": "its attention (with sinks) ignores segment boundaries on the backends we measured",
    "biogpt": "its learned positions come from the attention mask, not position_ids",
    "xglm": "its sinusoidal positions come from the attention mask, not position_ids",
    "mamba": _RECURRENT,
    "mamba2": _RECURRENT,
    "falcon_mamba": _RECURRENT,
    "jamba": _RECURRENT,
    "bamba": _RECURRENT,
    "granitemoehybrid": _RECURRENT,
    "falcon_h1": _RECURRENT,
    "zamba2": _RECURRENT,
    "nemotron_h": _RECURRENT,
    "recurrent_gemma": _RECURRENT,
    "qwen3_next": _LINEAR,
    "minimax": "its linear (lightning) attention layers carry their state into the next segment",
    "lfm2": _CONV,
    "lfm2_moe": _CONV,
    "lfm3": _CONV,
    "zaya": "its convolutional attention layers reach into the end of the segment before",
    "qwen3_5": _LINEAR,
    "qwen3_5_text": _LINEAR,
    "qwen3_5_moe": _LINEAR,
    "qwen3_5_moe_text": _LINEAR,
    "qwen4_exp": _LINEAR,
    "qwen4_exp_text": _LINEAR,
    "olmo_hybrid": _LINEAR,
    "kimi_linear": _LINEAR,
    "bailing_hybrid": _LINEAR,
    "lara_mini": _LINEAR,
    "afmoe": "its attention masks are built without position_ids, so the segments are not told apart",
    "deepseek_v4": "its compressed attention pools keys across segment boundaries",
}


def packing_refusal(model_type: str) -> str | None:
    """Why natscale cannot train this family on packed rows (None when it can)."""
    reason = PACKING_LEAKS.get(model_type)
    if reason is None:
        return None
    return (
        f"model type {model_type!r} cannot be trained on packed rows: {reason}, so a segment "
        "would see the segments before it in its row (docs/training.md#model-families)"
    )


def unchecked_note(model_type: str) -> str | None:
    """A note for a family natscale has not checked (None for a checked or refused one)."""
    if model_type in CHECKED or model_type in PACKING_LEAKS:
        return None
    return (
        f"model type {model_type!r} is not among the families natscale checks for packed "
        "attention and logits (docs/training.md#model-families); run `natscale check-model` "
        "on its model directory before a long run (a tiny random copy, on CPU)"
    )


def index_topk(config: Any) -> int | None:
    """The keys DeepSeek Sparse Attention keeps per query (None: the model has no such indexer)."""
    text = text_config(config)
    topk = getattr(text, "index_topk", None)
    return int(topk) if topk else None


def sparse_attention_refusal(config: Any, row_tokens: int) -> str | None:
    """Why packed rows of ``row_tokens`` tokens would mix segments in a model with DeepSeek
    Sparse Attention (None when they do not). Its indexer keeps the ``index_topk`` best keys of
    the whole row before the block-causal mask applies, so once a row is longer than
    ``index_topk`` a token keeps fewer of its own segment's keys than it would alone (measured
    with transformers 5.25 on CPU: deepseek_v32, glm_moe_dsa and hy_v4 differ at index_topk
    below the row length and are exact at or above it)."""
    topk = index_topk(config)
    if topk is None or row_tokens <= topk:
        return None
    model_type = getattr(config, "model_type", "this model")
    return (
        f"{model_type}'s sparse attention keeps the top index_topk={topk} keys of a whole packed "
        f"row, whatever their segment, so with rows of up to {row_tokens} tokens a segment "
        "trains on other keys than it "
        f"would alone (docs/training.md#model-families); or prepare the data with max_seq_len "
        f"<= {topk}"
    )
