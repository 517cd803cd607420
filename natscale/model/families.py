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

CHECKED = frozenset(
    {
        "apertus", "arcee", "codegen", "cohere", "cohere2", "deepseek_v2", "deepseek_v3",
        "dots1", "ernie4_5", "ernie4_5_moe", "exaone4", "falcon", "flex_olmo", "gemma",
        "gemma2", "gemma3_text", "glm", "glm4", "glm4_moe", "gpt2", "gpt_bigcode",
        "gpt_neo", "gpt_neox", "gptj", "granite", "granitemoe", "granitemoeshared",
        "helium", "hunyuan_v1_dense", "hunyuan_v1_moe", "hyperclovax", "jetmoe", "llama",
        "llama4_text", "minicpm3", "ministral", "mistral", "mixtral", "nanochat",
        "nemotron", "olmo", "olmo2", "olmo3", "olmoe", "phi", "phi3", "phimoe", "qwen2",
        "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss", "smollm3", "stablelm", "starcoder2",
        "vaultgemma",
    }
)  # fmt: skip

_RECURRENT = "its recurrent (state-space) layers carry their state into the next segment"
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
    "qwen3_next": "its linear-attention (Gated DeltaNet) layers carry their state into the next segment",
    "minimax": "its linear (lightning) attention layers carry their state into the next segment",
    "lfm2": "its short convolutions reach into the end of the segment before",
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
        "attention and logits (docs/training.md#model-families); run "
        "tests/model/test_architectures.py with a tiny config of it before a long run"
    )
