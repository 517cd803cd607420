"""The segment loss's API: input checks, autograd plumbing, custom op, nn.Module (CPU build)."""

from __future__ import annotations

import pytest
import torch

from natscale.ops import segment_cross_entropy, segment_cross_entropy_reference
from natscale.ops.segment_ce.dispatch import last_choice
from natscale.ops.segment_ce.function import segment_ce_op
from natscale.ops.segment_ce.module import SegmentCrossEntropy
from tests.ops.segment_ce_cases import make_inputs, run_native


@pytest.fixture
def inputs(cpu_build):
    return make_inputs(40, 16, 211, seg_lens=[15, 15, 6], seed=3)


def _call(inputs, **overrides):
    args = dict(
        hidden=inputs.hidden,
        weight=inputs.weight,
        targets=inputs.targets,
        token_weight=inputs.token_weight,
        cu_seqlens=inputs.cu_seqlens,
    )
    args.update(overrides)
    return segment_cross_entropy(**args, impl="cpu")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (lambda i: {"cu_seqlens": i.cu_seqlens.long()}, "cu_seqlens must be int32"),
        (lambda i: {"hidden": i.hidden.t().contiguous().t()}, "hidden must be contiguous"),
        (lambda i: {"hidden": i.hidden[None]}, r"hidden must be \[T, H\]"),
        (lambda i: {"weight": i.weight.bfloat16()}, "differs from hidden dtype"),
        (lambda i: {"weight": i.weight[:, :8].contiguous()}, r"weight must be \[V, H\]"),
        (lambda i: {"weight": i.weight[:0]}, "ZeRO-3"),
        (lambda i: {"weight": i.weight.new_empty(0)}, "not gathered"),
        (lambda i: {"targets": i.targets.int()}, "targets must be int64"),
        (lambda i: {"targets": i.targets[:-1]}, r"targets must be \[T\]"),
        (lambda i: {"token_weight": i.token_weight[:3]}, r"token_weight must be \[T\]"),
        (lambda i: {"targets": torch.full_like(i.targets, 211)}, r"outside \[0, V = 211\)"),
        (lambda i: {"cu_seqlens": torch.tensor([0, 20, 10], dtype=torch.int32)}, "non-decreasing"),
        (lambda i: {"cu_seqlens": torch.tensor([0, 41], dtype=torch.int32)}, "exceeds"),
        (lambda i: {"cu_seqlens": torch.tensor([1, 10], dtype=torch.int32)}, r"cu_seqlens\[0\]"),
    ],
    ids=[
        "cu-int64",
        "hidden-noncontiguous",
        "hidden-3d",
        "dtype-mismatch",
        "hidden-size-mismatch",
        "zero3-empty-weight",
        "zero3-not-gathered-1d",
        "targets-int32",
        "targets-length",
        "token-weight-length",
        "target-out-of-range",
        "cu-decreasing",
        "cu-past-end",
        "cu-not-zero",
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(inputs, overrides, message):
    with pytest.raises(ValueError, match=message):
        _call(inputs, **overrides(inputs))


def test_wrong_num_trained_is_an_error(inputs):
    with pytest.raises(ValueError, match="num_trained"):
        _call(inputs, num_trained=inputs.num_trained + 1)


@pytest.mark.parametrize(
    ("hidden_grad", "weight_grad"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_gradients_only_where_requested(inputs, hidden_grad, weight_grad):
    hidden = inputs.hidden.clone().requires_grad_(hidden_grad)
    weight = inputs.weight.clone().requires_grad_(weight_grad)
    loss, seg_nll, seg_count = _call(inputs, hidden=hidden, weight=weight)
    expected = segment_cross_entropy_reference(*inputs.args())[0]
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    assert loss.requires_grad == (hidden_grad or weight_grad)
    assert not seg_nll.requires_grad and seg_count.dtype == torch.int32
    if loss.requires_grad:
        loss.backward()
    assert (hidden.grad is not None) == hidden_grad
    assert (weight.grad is not None) == weight_grad


def test_no_grad_mode_computes_no_gradients(inputs):
    hidden = inputs.hidden.clone().requires_grad_()
    with torch.no_grad():
        loss, _, _ = _call(inputs, hidden=hidden)
    assert not loss.requires_grad


def test_backward_scales_by_the_incoming_gradient(inputs):
    once = run_native(inputs, "cpu")
    hidden = inputs.hidden.clone().requires_grad_()
    weight = inputs.weight.clone().requires_grad_()
    loss, _, _ = _call(inputs, hidden=hidden, weight=weight)
    (loss * -0.25).backward()
    torch.testing.assert_close(hidden.grad, once.grad_hidden * -0.25)
    torch.testing.assert_close(weight.grad, once.grad_weight * -0.25)


def test_gradient_accumulates_into_existing_grad(inputs):
    # What ZeRO-3 relies on: the weight gradient arrives through autograd like any other.
    weight = inputs.weight.clone().requires_grad_()
    for _ in range(2):
        _call(inputs, weight=weight)[0].backward()
    once = run_native(inputs, "cpu")
    torch.testing.assert_close(weight.grad, 2 * once.grad_weight)


def test_module_wrapper_matches_function(inputs):
    module = SegmentCrossEntropy(impl="cpu", chunk_size=8)
    assert "impl=cpu" in repr(module)
    assert list(module.parameters()) == []
    got = module(*inputs.args(), num_trained=inputs.num_trained)
    want = _call(inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_custom_op_passes_opcheck(inputs):
    hidden = inputs.hidden.clone().requires_grad_()
    weight = inputs.weight.clone().requires_grad_()
    args = (hidden, weight, inputs.targets, inputs.token_weight, inputs.cu_seqlens, -1, 8)
    torch.library.opcheck(segment_ce_op, (*args, True, True))
    torch.library.opcheck(segment_ce_op, (*args, False, False))


def test_runs_under_torch_compile(inputs):
    def step(hidden, weight):
        loss, seg_nll, _ = segment_cross_entropy(
            hidden, weight, inputs.targets, inputs.token_weight, inputs.cu_seqlens, impl="cpu"
        )
        return loss * 2.0 + seg_nll.sum() * 0.0

    hidden = inputs.hidden.clone().requires_grad_()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    compiled(hidden, inputs.weight).backward()
    eager_hidden = inputs.hidden.clone().requires_grad_()
    step(eager_hidden, inputs.weight).backward()
    torch.testing.assert_close(hidden.grad, eager_hidden.grad)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_zero3_placeholder_weight_gets_the_gather_hint(cpu_build, inputs, impl):
    """DeepSpeed leaves a 1-D [0] tensor on a parameter that is not gathered: every
    implementation, and the extension itself, name the cause instead of a shape mismatch."""
    placeholder = inputs.weight.new_empty(0)
    with pytest.raises(ValueError, match=r"not gathered.*GatheredParameters"):
        segment_cross_entropy(*inputs.args()[:1], placeholder, *inputs.args()[2:], impl=impl)
    with pytest.raises(ValueError, match="under ZeRO-3 the lm_head parameter is not gathered"):
        cpu_build.forward(
            inputs.hidden, placeholder, inputs.targets, inputs.token_weight, inputs.cu_seqlens,
            -1, 0, True, True,
        )  # fmt: skip


def test_float16_is_refused_by_the_native_op_and_auto_uses_the_reference(inputs):
    """fp16 gradients formed before the loss scale would underflow: the native builds refuse
    fp16 with the reason, and auto picks the reference for it, saying why."""
    half = inputs.hidden.half(), inputs.weight.half()
    with pytest.raises(ValueError, match=r"float16 is not supported.*train in bf16"):
        _call(inputs, hidden=half[0], weight=half[1])
    loss = segment_cross_entropy(*half, *inputs.args()[2:], impl="auto")[0]
    want = segment_cross_entropy_reference(*half, *inputs.args()[2:])[0]
    assert torch.equal(loss, want)
    assert last_choice()["cpu"]["impl"] == "reference"
    assert "float16" in last_choice()["cpu"]["why"]


def test_weight_gradient_is_rounded_to_its_dtype_once(inputs):
    """The op hands dW over in fp32; backward scales it and rounds to bf16 once (rounding in the
    forward and again after the scaling would differ from this in the last bit)."""
    hidden, weight = inputs.hidden.bfloat16(), inputs.weight.bfloat16().requires_grad_()
    raw = segment_ce_op(
        hidden, weight, inputs.targets, inputs.token_weight, inputs.cu_seqlens, -1, 0, True, True
    )[4]
    assert raw.dtype == torch.float32 and raw.shape == weight.shape
    scale = 0.37  # like 1 / the step's trained-token count: not a power of two
    loss = segment_cross_entropy(hidden, weight, *inputs.args()[2:], impl="cpu")[0]
    (loss * scale).backward()
    assert weight.grad.dtype == torch.bfloat16
    assert torch.equal(weight.grad, (raw * scale).bfloat16())
    assert not torch.equal(weight.grad, (raw.bfloat16().float() * scale).bfloat16())
