"""Inputs, the float64 oracle and the tolerance rule shared by the segment-loss tests.

Tolerance rule (STYLE.md, after flash-attn): an implementation's error against the float64
reference must be at most 2x the error of a same-dtype PyTorch computation (materialised logits in
the input dtype, then F.cross_entropy), forward and backward. The reference runs on the inputs
*after* rounding to the test dtype, so only the computation's error is measured.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest
import torch

from natscale.ops import (
    IGNORE_INDEX,
    segment_cross_entropy,
    segment_cross_entropy_materialized,
    segment_cross_entropy_reference,
)

SLOW = pytest.mark.skipif(os.environ.get("NATSCALE_SLOW") != "1", reason="set NATSCALE_SLOW=1")
HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@dataclass
class Inputs:
    hidden: torch.Tensor  # [T, H] in the test dtype
    weight: torch.Tensor  # [V, H] in the test dtype
    targets: torch.Tensor  # [T] int64
    token_weight: torch.Tensor  # [T] fp32
    cu_seqlens: torch.Tensor  # [S + 1] int32

    def args(self) -> tuple[torch.Tensor, ...]:
        return self.hidden, self.weight, self.targets, self.token_weight, self.cu_seqlens

    @property
    def num_trained(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def make_inputs(
    num_tokens: int,
    hidden_size: int,
    vocab: int,
    *,
    dtype: torch.dtype = torch.float32,
    seg_lens: list[int] | None = None,
    mask_fraction: float = 0.3,
    seed: int = 0,
    device: str = "cpu",
) -> Inputs:
    """Random packed inputs; logits have a std of ~3 (a trained LM's range).

    ``seg_lens`` (default: ~4 segments) may sum to less than T: the rest is padding (-100).
    Segment starts are untrained (as packing makes them) and some token weights are 0.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) * (3.0 / hidden_size**0.5)
    targets = torch.randint(0, vocab, (num_tokens,), generator=gen)
    targets[torch.rand(num_tokens, generator=gen) < mask_fraction] = IGNORE_INDEX
    token_weight = torch.rand(num_tokens, generator=gen) * 2.0
    token_weight[torch.rand(num_tokens, generator=gen) < 0.1] = 0.0
    if seg_lens is None:
        cuts = sorted(torch.randint(0, num_tokens + 1, (3,), generator=gen).tolist())
        bounds = [0, *cuts, num_tokens]
        seg_lens = [b - a for a, b in itertools.pairwise(bounds)]
    cu = torch.tensor([0, *torch.tensor(seg_lens).cumsum(0).tolist()], dtype=torch.int32)
    assert int(cu[-1]) <= num_tokens
    targets[cu[:-1][torch.tensor(seg_lens) > 0].long()] = IGNORE_INDEX
    targets[int(cu[-1]) :] = IGNORE_INDEX
    return Inputs(
        hidden.to(device=device, dtype=dtype),
        weight.to(device=device, dtype=dtype),
        targets.to(device),
        token_weight.to(device),
        cu.to(device),
    )


@dataclass
class Result:
    loss: torch.Tensor
    seg_nll: torch.Tensor
    seg_count: torch.Tensor
    grad_hidden: torch.Tensor
    grad_weight: torch.Tensor


def run_with_grads(fn, inputs: Inputs, **kwargs) -> Result:
    hidden = inputs.hidden.detach().clone().requires_grad_()
    weight = inputs.weight.detach().clone().requires_grad_()
    loss, seg_nll, seg_count = fn(
        hidden, weight, inputs.targets, inputs.token_weight, inputs.cu_seqlens, **kwargs
    )
    loss.backward()
    return Result(loss.detach(), seg_nll.detach(), seg_count, hidden.grad, weight.grad)


def run_native(inputs: Inputs, impl: str, **kwargs) -> Result:
    return run_with_grads(segment_cross_entropy, inputs, impl=impl, **kwargs)


def oracle(inputs: Inputs, max_elements: int = 1 << 25) -> Result:
    """The reference spec in float64 on the rounded inputs, in token chunks (bounded memory).

    Chunking is exact: the loss, the per-segment sums and dW add up over tokens, dX is per token;
    each chunk sees the segments clipped to its own tokens.
    """
    hidden = inputs.hidden.detach().double()
    weight = inputs.weight.detach().double().requires_grad_()
    num_tokens, num_segments = hidden.shape[0], inputs.cu_seqlens.numel() - 1
    chunk = max(1, max_elements // weight.shape[0])
    loss = torch.zeros((), dtype=torch.float64, device=hidden.device)
    seg_nll = torch.zeros(num_segments, dtype=torch.float64, device=hidden.device)
    seg_count = torch.zeros(num_segments, dtype=torch.int32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden)
    cu = inputs.cu_seqlens.long()
    for start in range(0, num_tokens, chunk):
        end = min(num_tokens, start + chunk)
        h_c = hidden[start:end].clone().requires_grad_()
        cu_c = (cu - start).clamp(0, end - start).to(torch.int32)
        loss_c, seg_c, count_c = segment_cross_entropy_reference(
            h_c, weight, inputs.targets[start:end], inputs.token_weight[start:end], cu_c
        )
        loss_c.backward()
        loss += loss_c.detach()
        seg_nll += seg_c
        seg_count += count_c
        grad_hidden[start:end] = h_c.grad
    if num_tokens == 0:
        weight.grad = torch.zeros_like(weight)
    return Result(loss, seg_nll, seg_count, grad_hidden, weight.grad)


def target_logits(inputs: Inputs) -> torch.Tensor:
    """Per-token |z_{t, y_t}| in float64 (0 where untrained): what rounding the logits perturbs."""
    trained = inputs.targets != IGNORE_INDEX
    safe = torch.where(trained, inputs.targets, torch.zeros_like(inputs.targets))
    z_y = (inputs.hidden.double() * inputs.weight.double()[safe]).sum(-1)
    return torch.where(trained, z_y.abs(), 0.0)


def assert_rule(name: str, ours, same_dtype, ref, floor: float = 0.0) -> None:
    ours, same_dtype, ref = ours.double(), same_dtype.double(), ref.double()
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours - ref).abs().max().item() if ref.numel() else 0.0
    err_torch = (same_dtype - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= 2 * err_torch + floor, (
        f"{name}: error {err:.3e} > 2 x same-dtype torch error {err_torch:.3e} + floor {floor:.3e}"
    )


def check_against_reference(inputs: Inputs, impl: str, **kwargs) -> None:
    """Forward and backward of ``impl`` against the float64 oracle by the tolerance rule."""
    ours = run_native(inputs, impl, **kwargs)
    ref = oracle(inputs)
    torch_same = run_with_grads(segment_cross_entropy_materialized, inputs)
    eps32 = torch.finfo(torch.float32).eps
    eps_in = torch.finfo(inputs.hidden.dtype).eps
    # Floors, each with its reason:
    # - scalars and per-segment sums: one torch error can be ~0 by luck, so allow ~3.5 sigma of
    #   the random walk that rounding the target logits to the input dtype makes over the tokens
    #   (eps = 2 unit roundoffs), plus 8 fp32 ulps of the value itself;
    # - gradients: 2 fp32 ulps of the largest entry (an fp32 result cannot do better).
    z_y = target_logits(inputs)
    weighted = inputs.token_weight.double() * z_y
    loss_floor = eps_in * weighted.square().sum().sqrt().item() + 8 * eps32 * ref.loss.abs().item()
    assert_rule("loss_sum", ours.loss, torch_same.loss, ref.loss, loss_floor)
    if ref.seg_nll.numel():
        cu = inputs.cu_seqlens.long()
        csum = torch.cat([z_y.new_zeros(1), z_y.square().cumsum(0)])
        seg_scale = (csum[cu[1:]] - csum[cu[:-1]]).clamp_min(0).sqrt().max().item()
        seg_floor = eps_in * seg_scale + 8 * eps32 * ref.seg_nll.abs().max().item()
        assert_rule("seg_nll", ours.seg_nll, torch_same.seg_nll, ref.seg_nll, seg_floor)
    assert torch.equal(ours.seg_count.cpu(), ref.seg_count.cpu()), "seg_count"
    for name in ("grad_hidden", "grad_weight"):
        r = getattr(ref, name)
        floor = 2 * eps32 * (r.abs().max().item() if r.numel() else 0.0)
        assert_rule(name, getattr(ours, name), getattr(torch_same, name), r, floor)
    assert ours.grad_hidden.dtype == inputs.hidden.dtype
    assert ours.grad_weight.dtype == inputs.weight.dtype
