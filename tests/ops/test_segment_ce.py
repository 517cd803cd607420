"""Native segment loss (CPU and CUDA builds) against the float64 reference: forward and backward.

CPU CI covers V > 65536 with small T, T = 4096 with small V, and chunk edges; the full T x V
matrix is `slow` on CPU and `gpu` on CUDA.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.ops.segment_ce_cases import (
    GPU,
    HAS_CUDA,
    SLOW,
    check_against_reference,
    make_inputs,
    oracle,
    run_native,
)

IMPLS = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=GPU)]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.fixture
def native(request, impl):
    """The build under test; a failed build fails the test (see conftest.cpu_build)."""
    if impl == "cpu":
        request.getfixturevalue("cpu_build")
        return "cpu"
    from natscale.ops.builder import SEGMENT_CE_CUDA

    SEGMENT_CE_CUDA.load()
    return "cuda"


def _device(impl: str) -> str:
    return "cuda" if impl == "cuda" else "cpu"


# (T, V, H, chunk_size): V > 65536 at small T, T = 4096 at small V, chunks cut through segments.
FAST_SHAPES = [
    pytest.param(1, 97, 64, None, id="T1-V97"),
    pytest.param(7, 151936, 32, None, id="T7-V151936"),
    pytest.param(7, 128256, 32, 3, id="T7-V128256-chunk3"),
    pytest.param(513, 32000, 32, 128, id="T513-V32000-chunk128"),
    pytest.param(4096, 97, 64, None, id="T4096-V97"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "vocab", "hidden_size", "chunk"), FAST_SHAPES)
def test_matches_reference(native, impl, dtype, num_tokens, vocab, hidden_size, chunk):
    inputs = make_inputs(num_tokens, hidden_size, vocab, dtype=dtype, device=_device(impl), seed=1)
    check_against_reference(inputs, native, chunk_size=chunk)


def _full_matrix(marks: list, hidden_size: int, *, cpu: bool) -> list:
    """T in {1, 7, 513, 4096} x V in {97, 32000, 128256, 151936} x {fp32, bf16}."""
    params = []
    for num_tokens, vocab, (dtype, name) in itertools.product(
        [1, 7, 513, 4096],
        [97, 32000, 128256, 151936],
        [(torch.float32, "fp32"), (torch.bfloat16, "bf16")],
    ):
        case_marks = list(marks)
        if cpu and num_tokens * vocab > (1 << 27):
            # The materialised torch comparator alone needs > 10 GB here: covered on the GPU.
            case_marks.append(pytest.mark.skip(reason="T*V too large for the CPU comparator"))
        case_id = f"T{num_tokens}-V{vocab}-{name}"
        params.append(
            pytest.param(num_tokens, vocab, hidden_size, dtype, marks=case_marks, id=case_id)
        )
    return params


@pytest.mark.parametrize("impl", ["cpu"])
@pytest.mark.parametrize(
    ("num_tokens", "vocab", "hidden_size", "dtype"),
    _full_matrix([pytest.mark.slow, SLOW], 32, cpu=True),
)
def test_full_matrix_cpu(native, impl, num_tokens, vocab, hidden_size, dtype):
    inputs = make_inputs(num_tokens, hidden_size, vocab, dtype=dtype, seed=2)
    check_against_reference(inputs, native)


@pytest.mark.parametrize("impl", ["cuda"])
@pytest.mark.parametrize(
    ("num_tokens", "vocab", "hidden_size", "dtype"), _full_matrix(GPU, 256, cpu=False)
)
@pytest.mark.parametrize("hint", [False, True], ids=["no-hint", "num_trained"])
def test_full_matrix_cuda(native, impl, num_tokens, vocab, hidden_size, dtype, hint):
    inputs = make_inputs(num_tokens, hidden_size, vocab, dtype=dtype, seed=2, device="cuda")
    kwargs = {"num_trained": inputs.num_trained} if hint else {}
    check_against_reference(inputs, native, **kwargs)


# ---- segment edge cases -------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_one_token_segments(native, impl):
    inputs = make_inputs(24, 32, 97, seg_lens=[1] * 24, mask_fraction=0.0, device=_device(impl))
    # Every one-token segment starts untrained (packing), so all counts are 0...
    ours = run_native(inputs, native)
    assert ours.seg_count.sum().item() == 0 and ours.loss.item() == 0.0
    # ...and with the start rule lifted each segment holds exactly its own token.
    inputs.targets[:] = torch.arange(24, device=inputs.targets.device) % 97
    check_against_reference(inputs, native, chunk_size=5)
    ours = run_native(inputs, native, chunk_size=5)
    assert ours.seg_count.tolist() == [1] * 24


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_segments_give_zero(native, impl):
    inputs = make_inputs(40, 32, 97, seg_lens=[10, 10, 0, 10, 10], device=_device(impl))
    inputs.targets[10:20] = -100  # segment 1: every token masked; segment 2: empty
    ours = run_native(inputs, native, chunk_size=8)
    assert ours.seg_nll[1].item() == 0.0 and ours.seg_count[1].item() == 0
    assert ours.seg_nll[2].item() == 0.0 and ours.seg_count[2].item() == 0
    assert torch.isfinite(ours.seg_nll).all() and torch.isfinite(ours.loss)
    assert (ours.grad_hidden[10:20] == 0).all()
    check_against_reference(inputs, native, chunk_size=8)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hint", [False, True], ids=["no-hint", "num_trained"])
def test_all_masked_batch_is_zero_not_nan(native, impl, hint):
    inputs = make_inputs(33, 16, 128256, seg_lens=[20, 13], device=_device(impl))
    inputs.targets[:] = -100
    inputs.token_weight[:] = float("nan")  # ignored where untrained, like the reference
    ours = run_native(inputs, native, **({"num_trained": 0} if hint else {}))
    assert ours.loss.item() == 0.0
    assert ours.seg_nll.tolist() == [0.0, 0.0] and ours.seg_count.tolist() == [0, 0]
    assert (ours.grad_hidden == 0).all() and (ours.grad_weight == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_boundary_on_chunk_edge(native, impl, dtype):
    # No masking, so chunk edges (every 16 trained rows) fall exactly on the segment boundaries
    # 16 and 48, and inside the 16..48 segment.
    inputs = make_inputs(
        80, 32, 1000, dtype=dtype, seg_lens=[16, 32, 20], mask_fraction=0.0, device=_device(impl)
    )
    inputs.targets[torch.tensor([0, 16, 48])] = torch.tensor([5, 6, 7]).to(inputs.targets)
    check_against_reference(inputs, native, chunk_size=16)
    whole = run_native(inputs, native, chunk_size=4096)
    chunked = run_native(inputs, native, chunk_size=16)
    assert torch.equal(whole.seg_count, chunked.seg_count)
    torch.testing.assert_close(whole.seg_nll, chunked.seg_nll, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_and_no_segments(native, impl):
    device = _device(impl)
    inputs = make_inputs(30, 16, 97, seg_lens=[12, 8], device=device)  # 10 padding tokens
    check_against_reference(inputs, native)
    no_segments = make_inputs(9, 16, 97, seg_lens=[], device=device)
    ours = run_native(no_segments, native)
    assert ours.seg_nll.shape == (0,) and ours.seg_count.shape == (0,)
    assert ours.loss.item() == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_num_trained_hint_gives_same_result(native, impl):
    inputs = make_inputs(300, 32, 5000, device=_device(impl), seed=4)
    plain = run_native(inputs, native, chunk_size=64)
    hinted = run_native(inputs, native, chunk_size=64, num_trained=inputs.num_trained)
    torch.testing.assert_close(plain.loss, hinted.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(plain.grad_hidden, hinted.grad_hidden, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain.grad_weight, hinted.grad_weight, rtol=1e-5, atol=1e-7)
    assert torch.equal(plain.seg_count, hinted.seg_count)


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic(native, impl):
    inputs = make_inputs(257, 32, 3001, dtype=torch.bfloat16, device=_device(impl), seed=5)
    first = run_native(inputs, native, chunk_size=64, num_trained=inputs.num_trained)
    second = run_native(inputs, native, chunk_size=64, num_trained=inputs.num_trained)
    for name in ("loss", "seg_nll", "seg_count", "grad_hidden", "grad_weight"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_cuda_forward_backward_never_syncs():
    from natscale.ops import segment_cross_entropy
    from natscale.ops.builder import SEGMENT_CE_CUDA

    SEGMENT_CE_CUDA.load()
    # production-like T (several default-size chunks at V=128256), so the chunk loop is covered
    inputs = make_inputs(16384, 1024, 128256, dtype=torch.bfloat16, device="cuda")
    hidden = inputs.hidden.clone().requires_grad_()
    weight = inputs.weight.clone().requires_grad_()
    num_trained = inputs.num_trained
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _, _ = segment_cross_entropy(
            hidden, weight, *inputs.args()[2:], num_trained=num_trained, impl="cuda"
        )
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_cuda_matches_cpu_build(cpu_build):
    inputs = make_inputs(129, 64, 4099, seed=6)
    cpu = run_native(inputs, "cpu")
    cuda_inputs = make_inputs(129, 64, 4099, seed=6, device="cuda")
    cuda = run_native(cuda_inputs, "cuda")
    torch.testing.assert_close(cuda.loss.cpu(), cpu.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cuda.grad_weight.cpu(), cpu.grad_weight, rtol=1e-4, atol=1e-6)
    ref = oracle(inputs)
    assert torch.equal(cuda.seg_count.cpu(), ref.seg_count)
