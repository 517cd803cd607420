"""What a Hugging Face ``*ForCausalLM`` does to its lm_head's output before the loss.

Most causal LMs compute ``logits = lm_head(h)``. Some change them first, and natscale's loss
heads must do the same, or a run trains against other logits than the model predicts with:

- a constant factor: Granite ``logits / logits_scaling`` (MiniCPM3 divides the hidden states),
  HyperCLOVA X ``logits * logits_scaling``, Cohere ``logits * logit_scale``;
- a cap: Gemma 2 (and Gemma 3, VaultGemma, nanochat where set) ``c * tanh(logits / c)`` with
  ``c = final_logit_softcapping`` (RecurrentGemma: ``logits_soft_cap``);
- a bias in the lm_head itself (Phi-1/2, ``nn.Linear(..., bias=True)``).

The fused loss (:func:`natscale.ops.segment_cross_entropy`) computes ``h @ W.T``: a factor is
folded into ``h`` exactly, a cap or a bias cannot be, so those models need ``model.loss: logits``
(:class:`natscale.model.nat_lm.LogitsLossHead` applies all three). Fields of other, rarer
architectures are not known here; ``tests/model/test_architectures.py`` checks the families
listed in ``docs/training.md`` against the HF model's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from natscale.model.load import text_config

# families whose ``logits_scaling`` multiplies the logits (the others divide them by it)
MULTIPLY_LOGITS_SCALING = frozenset({"hyperclovax"})


@dataclass(frozen=True)
class LogitTransform:
    """``logits * scale``, then ``softcap * tanh(logits / softcap)`` when ``softcap`` is set."""

    scale: float = 1.0
    softcap: float | None = None
    fields: tuple[str, ...] = ()  # the config fields that set them, as "name=value"

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


# Gemma 2 / 3 / 4 and others; RecurrentGemma names it logits_soft_cap
SOFTCAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap")


def logit_transform(config: Any) -> LogitTransform:
    """The transform an HF config asks for (its text config, for a multimodal one)."""
    text = text_config(config)
    scale, fields = 1.0, []
    # Granite and MiniCPM3 divide by logits_scaling, HyperCLOVA X multiplies
    scaling = getattr(text, "logits_scaling", None)
    if scaling is not None and float(scaling) != 1.0:
        multiplies = getattr(text, "model_type", None) in MULTIPLY_LOGITS_SCALING
        scale = scale * float(scaling) if multiplies else scale / float(scaling)
        fields.append(f"logits_scaling={scaling}")
    factor = getattr(text, "logit_scale", None)  # Cohere family
    if isinstance(factor, (int, float)) and float(factor) != 1.0:
        scale *= float(factor)
        fields.append(f"logit_scale={factor}")
    softcap = None
    for name in SOFTCAP_FIELDS:
        if cap := getattr(text, name, None):
            softcap = float(cap)
            fields.append(f"{name}={cap}")
            break
    return LogitTransform(scale=scale, softcap=softcap, fields=tuple(fields))


def fused_loss_blocker(config: Any, head: nn.Module) -> str | None:
    """Why the fused loss cannot train this model exactly (None when it can)."""
    model_type = getattr(config, "model_type", "this model")
    transform = logit_transform(config)
    if transform.softcap is not None:
        name = next(f.split("=")[0] for f in transform.fields if f.split("=")[0] in SOFTCAP_FIELDS)
        return (
            f"{model_type} caps its logits ({name}={transform.softcap:g}), "
            "which the fused loss cannot apply"
        )
    if getattr(head, "bias", None) is not None:
        return f"{model_type}'s lm_head has a bias, which the fused loss does not add"
    return None
