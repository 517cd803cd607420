"""The router load-balancing loss of a mixture-of-experts causal LM, as its HF class computes it.

An MoE ``*ForCausalLM`` of transformers (Mixtral, Qwen2/3-MoE, OLMoE, Granite-MoE, ...) adds
``router_aux_loss_coef * load_balancing_loss_func(router_logits, num_experts, top_k, mask)`` to
its loss when ``config.output_router_logits`` is true: the Switch Transformer loss, which keeps
tokens spread over the experts. natscale computes its loss from the hidden states, not through
the HF forward, so it adds this term itself, with the family's own function (from the module
that defines the model class) and the numbers the HF forward passes it.

The loss is a product of two means over tokens (the share of routings each expert gets and its
mean router probability), so it is taken over all real tokens of a micro-batch at once, with
padding masked out as HF masks it with the attention mask. Tokens of a packed row are routed one
by one, so packing does not change it: a packed micro-batch gives the same value as its segments
padded into a batch of their own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from natscale.model.load import text_config


@dataclass(frozen=True)
class RouterAux:
    """The coefficient and the family's loss function with its expert counts."""

    coef: float
    num_experts: int
    top_k: int
    loss_fn: Callable[..., torch.Tensor]

    def __call__(
        self, router_logits: tuple[torch.Tensor, ...], nonpad_T: torch.Tensor | None
    ) -> torch.Tensor:
        """The unweighted loss of one forward ([T, E] logits per MoE layer; padding masked out)."""
        return self.loss_fn(router_logits, self.num_experts, self.top_k, nonpad_T)


def router_loss_fn(model_cls: type) -> Callable[..., torch.Tensor] | None:
    """The family's ``load_balancing_loss_func`` (None when its HF class computes no such loss)."""
    fn = getattr(sys.modules.get(model_cls.__module__), "load_balancing_loss_func", None)
    return fn if callable(fn) else None


def router_aux_default(config: Any) -> float | None:
    """The coefficient the HF model itself would use (None when it adds no router loss)."""
    config = text_config(config)  # a multimodal MoE keeps them in its text config
    if not getattr(config, "output_router_logits", False):
        return None
    coef = getattr(config, "router_aux_loss_coef", None)
    return float(coef) if coef else None


def router_aux_refusal(config: Any, model_cls: type, coef: float | None) -> str | None:
    """Why ``model.router_aux_loss_coef: coef`` cannot apply to this model (None when it can)."""
    if not coef or router_loss_fn(model_cls) is not None:
        return None
    model_type = getattr(config, "model_type", model_cls.__name__)
    return (
        f"model.router_aux_loss_coef: {coef:g}, but {model_type} ({model_cls.__name__}) computes "
        "no router load-balancing loss in transformers; remove the key or set it to 0"
    )


def resolve_router_aux(lm: torch.nn.Module, coef: float | None) -> RouterAux | None:
    """The router loss to add for this model: ``coef`` when given (0: none), else what the HF
    model's config asks for (``output_router_logits`` and ``router_aux_loss_coef``)."""
    if coef is None:
        coef = router_aux_default(lm.config)
    if not coef:
        return None
    if (refusal := router_aux_refusal(lm.config, type(lm), coef)) is not None:
        raise ValueError(refusal)
    if not (hasattr(lm, "num_experts") and hasattr(lm, "num_experts_per_tok")):
        raise ValueError(
            f"model.router_aux_loss_coef: {type(lm).__name__} does not say its number of experts "
            "(num_experts, num_experts_per_tok) as natscale reads them; set it to 0"
        )
    return RouterAux(
        coef=float(coef),
        num_experts=int(lm.num_experts),
        top_k=int(lm.num_experts_per_tok),
        loss_fn=router_loss_fn(type(lm)),
    )
