"""The training module: a Hugging Face causal LM whose forward ends in the segment loss op.

``NatCausalLM`` adopts the HF model's children under their own names, so its state dict (and so
every DeepSpeed checkpoint and zero_to_fp32 output) uses exactly the HF parameter names. Its
forward runs the HF base model on packed rows and hands the last hidden states to
``SegmentLossHead``, which calls :func:`natscale.ops.segment_cross_entropy` with the output
embedding weight. The [T, V] logits are never formed by HF code.

Under ZeRO-3 the lm_head weight is partitioned and only the module whose forward is running gets
its parameters gathered. The head's weight belongs to ``lm_head`` (or, tied, to the input
embedding), whose forward never runs here, so it is registered as an *external parameter* of
``SegmentLossHead``: DeepSpeed gathers it for that module's forward and backward and releases it
after. This is why the loss must run inside the engine's forward.

Legend: B rows, L row length, T = B * L tokens, H hidden size, V vocabulary, S segments.
"""

from __future__ import annotations

import torch
from torch import nn

from natscale.model.logits import LogitTransform, fused_loss_blocker, logit_transform
from natscale.model.router import resolve_router_aux
from natscale.ops import IGNORE_INDEX, segment_cross_entropy
from natscale.ops.segment_ce.reference import per_segment_sums


class SegmentLossHead(nn.Module):
    """lm_head projection + segment-masked loss, on the (possibly partitioned) output embedding."""

    def __init__(self, output_embeddings: nn.Module, transform: LogitTransform | None = None):
        super().__init__()
        # a list, not a child module: the weight stays owned (and named) by the LM
        self._head = [output_embeddings]
        transform = transform or LogitTransform()
        if transform.softcap is not None:
            raise ValueError("the fused loss cannot apply a logit softcap (use model.loss: logits)")
        self.scale = transform.scale  # (s * h) @ W.T == s * (h @ W.T): folded into h

    def forward(
        self,
        hidden_TH: torch.Tensor,
        targets_T: torch.Tensor,
        token_weight_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        num_trained: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight_VH = self._head[0].weight
        if self.scale != 1.0:
            hidden_TH = hidden_TH * self.scale
        # num_trained (host-known) lets the CUDA op drop untrained tokens without a host sync
        return segment_cross_entropy(
            hidden_TH, weight_VH, targets_T, token_weight_T, cu_seqlens, num_trained=num_trained
        )


class LogitsLossHead(nn.Module):
    """The usual HF ``labels`` path: lm_head -> fp32 [T, V] logits -> ``F.cross_entropy``.

    A baseline for benchmarks (what a stock HF Trainer run computes), with the same outputs and
    normalisation contract as :class:`SegmentLossHead`. The lm_head module's own forward runs, so
    under ZeRO-3 DeepSpeed gathers its weight as for any module.
    """

    def __init__(self, output_embeddings: nn.Module, transform: LogitTransform | None = None):
        super().__init__()
        self._head = [output_embeddings]
        self.transform = transform or LogitTransform()  # HF's scale / softcap, in its order

    def forward(
        self,
        hidden_TH: torch.Tensor,
        targets_T: torch.Tensor,
        token_weight_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        num_trained: int | None = None,  # unused: the baseline computes every token's logits
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the lm_head module itself (its bias too), then the model's own scale / softcap
        logits_TV = self.transform.apply(self._head[0](hidden_TH)).float()  # HF upcasts too
        nll_T = nn.functional.cross_entropy(
            logits_TV, targets_T, ignore_index=IGNORE_INDEX, reduction="none"
        )
        trained_T = targets_T != IGNORE_INDEX
        loss_sum = (nll_T * torch.where(trained_T, token_weight_T.float(), 0.0)).sum()
        seg_nll, seg_count = per_segment_sums(nll_T.detach().float(), trained_T, cu_seqlens)
        return loss_sum, seg_nll, seg_count


LOSS_HEADS = {"fused": SegmentLossHead, "logits": LogitsLossHead}


class NatCausalLM(nn.Module):
    """Wraps an HF ``*ForCausalLM`` for packed, segment-weighted training."""

    def __init__(
        self,
        lm: nn.Module,
        *,
        flatten_rows: bool = False,
        loss: str = "fused",
        router_aux_loss_coef: float | None = None,
    ):
        super().__init__()
        if next(lm.named_parameters(recurse=False), None) is not None:
            raise ValueError(f"{type(lm).__name__} holds parameters outside its submodules")
        head = lm.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise ValueError(f"{type(lm).__name__} has no output embedding (lm_head) weight")
        for name, child in lm.named_children():
            self.add_module(name, child)
        self._lm = [lm]
        self._base_name = _base_model_name(lm)
        self.flatten_rows = flatten_rows
        if loss not in LOSS_HEADS:
            raise ValueError(f"model.loss must be one of {sorted(LOSS_HEADS)}, got {loss!r}")
        if loss == "fused" and (blocker := fused_loss_blocker(lm.config, head)) is not None:
            raise ValueError(f"model.loss: fused: {blocker}; set model.loss: logits")
        self.loss = loss
        self.nat_loss = LOSS_HEADS[loss](head, logit_transform(lm.config))
        # an MoE model's load-balancing loss (natscale.model.router); None: not added
        self.router_aux = resolve_router_aux(lm, router_aux_loss_coef)

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped HF model (shares every parameter with this module)."""
        return self._lm[0]

    def register_zero3_head(self) -> None:
        """Let ZeRO-3 gather the output embedding for the loss head (call before engine init)."""
        import deepspeed

        if self.loss != "fused":  # the lm_head module's own forward runs: ZeRO gathers it there
            return
        deepspeed.zero.register_external_parameter(self.nat_loss, self.nat_loss._head[0].weight)

    def hidden_states(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *, packed: bool = True
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """[B, L] ids and restarting positions -> ([B*L, H] last hidden states (block-causal),
        each MoE layer's [B*L, E] router logits when the router loss is on, else None).

        ``packed``: some row holds more than one segment. Rows of one segment each are never
        flattened: each row is then one causal sequence under every backend, which is what the
        families that cannot take packed rows need (a recurrent layer would run across rows)."""
        num_rows, length = input_ids.shape
        if self.flatten_rows and packed:  # flash-attn varlen reads segments of one [1, T] row
            input_ids = input_ids.reshape(1, -1)
            position_ids = position_ids.reshape(1, -1)
        base = getattr(self, self._base_name)
        kwargs = {"output_router_logits": True} if self.router_aux is not None else {}
        out = base(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs)
        router_logits = out.router_logits if self.router_aux is not None else None
        return out.last_hidden_state.reshape(num_rows * length, -1), router_logits

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        token_weight: torch.Tensor,
        cu_seqlens: torch.Tensor,
        num_trained: int | None = None,
        nonpad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (weighted loss sum fp32 [], per-segment NLL sum fp32 [S], trained count int32
        [S], the unweighted router load-balancing loss [] or None when it is off).

        ``num_trained``: the number of targets that are not -100, when known on the host.
        ``nonpad``: [B*L] bool, the tokens of real segments (the router loss leaves padding out;
        None: every token counts).
        """
        packed = cu_seqlens.numel() - 1 > input_ids.shape[0]  # more segments than rows
        hidden_TH, router_logits = self.hidden_states(input_ids, position_ids, packed=packed)
        loss_sum, seg_nll, seg_count = self.nat_loss(
            hidden_TH, targets, token_weight, cu_seqlens, num_trained
        )
        router_aux = None
        if router_logits is not None:
            router_aux = self.router_aux(router_logits, nonpad)
        return loss_sum, seg_nll, seg_count, router_aux


def _base_model_name(lm: nn.Module) -> str:
    """The name of the child holding the decoder: ``base_model_prefix``, else the one child that
    is an HF model (Llama 4's prefix is ``language_model``, but its decoder is ``model``)."""
    from transformers import PreTrainedModel

    prefix = lm.base_model_prefix
    if isinstance(getattr(lm, prefix, None), nn.Module):
        return prefix
    models = [n for n, c in lm.named_children() if isinstance(c, PreTrainedModel)]
    if len(models) != 1:
        raise ValueError(f"{type(lm).__name__}: cannot tell which child module is the decoder")
    return models[0]
