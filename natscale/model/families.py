"""Which model families natscale has checked for packed training, and which it refuses.

natscale trains packed rows only: several segments share a row, restarting ``position_ids`` mark
them, and transformers' attention must keep each token inside its segment. That holds for the
families in :data:`CHECKED`: ``tests/model/test_architectures.py`` compares a packed row's loss and
gradients with the HF model's own logits on each segment alone, for each of them. It does not
hold for :data:`PACKING_LEAKS` (measured with transformers 5.25 on CPU, the same test's
``test_families_whose_packed_rows_leak_still_leak``): their attention takes positions or the mask
from elsewhere, so a segment attends to the ones before it in its row, silently.
"""

from __future__ import annotations

CHECKED = frozenset(
    {
        "cohere", "codegen", "deepseek_v3", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2",
        "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "granite", "llama", "mistral", "mixtral",
        "olmo2", "olmoe", "phi", "phi3", "qwen2", "qwen3", "qwen3_moe", "smollm3", "stablelm",
        "starcoder2",
    }
)  # fmt: skip

PACKING_LEAKS = {
    "opt": "its learned positions come from the attention mask, not position_ids",
    "bloom": "its ALiBi biases come from the attention mask, not position_ids",
    "mpt": "its ALiBi biases ignore segment boundaries",
    "gpt_oss": "its attention (with sinks) ignores segment boundaries on the backends we measured",
}


def packing_refusal(model_type: str) -> str | None:
    """Why natscale cannot train this family on packed rows (None when it can)."""
    reason = PACKING_LEAKS.get(model_type)
    if reason is None:
        return None
    return (
        f"model type {model_type!r} cannot be trained on packed rows: {reason}, so a segment "
        "would attend to the segments before it in its row (docs/training.md#model-families)"
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
