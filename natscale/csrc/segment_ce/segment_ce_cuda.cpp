// CUDA implementation of the segment-masked cross-entropy: chunking and GEMMs (cuBLAS through
// ATen) around the torch-free kernels of segment_ce_kernels.cu.
//
// Legend: T tokens, H hidden, V vocabulary, S segments, n rows processed, C rows per chunk.
// Per chunk of C rows:   Z = X_c W^T            [C, V] in the input dtype (fp32 accumulation)
//                        ce_rows: lse, nll, Z <- w * (softmax - onehot)   (in place)
//                        dX_c = Z W             [C, H]
//                        dW  += Z^T X_c         [V, H] fp32
// Rows: with a host-known num_trained n, the trained tokens (stable device-side partition, so no
// host sync) and nothing else; without it, all T tokens (untrained rows get zero gradient).
// Nothing here reads device memory from the host; every reduction has a fixed order and dX / dW
// are written by GEMMs, not atomics, so results are bitwise reproducible on the same device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>

#include "segment_ce.h"
#include "segment_ce_kernels.cuh"

// aten::addmm.dtype_out (bf16/fp16 operands, fp32 output) appeared in torch 2.8; whether it accepts
// an fp32 `self` (what in-place fp32 accumulation needs) depends on the version, so it is tried
// once and a slower fallback is kept.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define NATSCALE_HAS_ADDMM_OUT_DTYPE 1
#else
#define NATSCALE_HAS_ADDMM_OUT_DTYPE 0
#endif

namespace natscale {
namespace segment_ce {
namespace {

constexpr int64_t kDefaultChunkBytes = 1LL << 30;  // logits per chunk (1 GiB: 4096 x 128256 bf16)
constexpr int64_t kChunkAlign = 128;
constexpr int64_t kFallbackVocabSlice = 16384;

LogitDType logit_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return LogitDType::kFloat32;
    case at::kHalf:
      return LogitDType::kFloat16;
    case at::kBFloat16:
      return LogitDType::kBFloat16;
    default:
      break;
  }
  TORCH_CHECK(false, "segment_cross_entropy: unsupported dtype ", t);
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "segment_cross_entropy: ", what,
              " failed: ", cudaGetErrorString(err));
}

int64_t default_chunk(int64_t vocab, int64_t elem_size) {
  const int64_t rows = kDefaultChunkBytes / (vocab * elem_size);
  return std::max<int64_t>(kChunkAlign, rows / kChunkAlign * kChunkAlign);
}

// grad_w32 (+)= dz^T @ x with fp32 accumulation; `first` overwrites instead of adding.
void accumulate_grad_weight(at::Tensor& grad_w32, const at::Tensor& dz, const at::Tensor& x,
                            bool first) {
  const int64_t beta = first ? 0 : 1;  // beta = 0 ignores the (uninitialised) old contents
  if (dz.scalar_type() == at::kFloat) {
    grad_w32.addmm_(dz.t(), x, beta, 1);
    return;
  }
#if NATSCALE_HAS_ADDMM_OUT_DTYPE
  // -1 unknown, 1 supported, 0 rejected by this torch (checked before any kernel is launched).
  static std::atomic<int> fp32_accumulate{-1};
  if (fp32_accumulate.load() != 0) {
    try {
      at::addmm_out(grad_w32, grad_w32, dz.t(), x, at::kFloat, beta, 1);
      fp32_accumulate.store(1);
      return;
    } catch (const c10::OutOfMemoryError&) {
      throw;  // out of memory says nothing about support: never fall back to the slow path for it
    } catch (const c10::Error&) {
      if (fp32_accumulate.load() == 1) throw;
      fp32_accumulate.store(0);
    }
  }
#endif
  // Fallback: each chunk's product is rounded to the input dtype once, then accumulated in fp32;
  // vocabulary slices bound the temporary to kFallbackVocabSlice x H.
  if (first) grad_w32.zero_();
  const int64_t vocab = dz.size(1);
  for (int64_t v0 = 0; v0 < vocab; v0 += kFallbackVocabSlice) {
    const int64_t len = std::min(kFallbackVocabSlice, vocab - v0);
    grad_w32.narrow(0, v0, len).add_(at::mm(dz.narrow(1, v0, len).t(), x));
  }
}

}  // namespace

Outputs forward_cuda(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                     const at::Tensor& token_weight, const at::Tensor& cu_seqlens,
                     const Options& options) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t num_tokens = hidden.size(0);
  const int64_t vocab = weight.size(0);
  const int64_t num_segments = cu_seqlens.size(0) - 1;
  const auto f32 = hidden.options().dtype(at::kFloat);
  const bool write_grad = options.grad_hidden || options.grad_weight;

  // Which rows go through the GEMMs, and how many (a host value in both cases: no sync).
  const bool compact = options.num_trained >= 0;
  const int64_t num_rows = compact ? options.num_trained : num_tokens;
  at::Tensor rows, row_targets, row_weights;
  if (compact) {
    const at::Tensor trained = targets.ne(kIgnore);
    // The caller's count is checked on the device; a wrong count would silently drop tokens.
    at::_assert_async(trained.sum().eq(num_rows),
                      "segment_cross_entropy: num_trained differs from the number of targets "
                      "that are not -100");
    // Stable sort of the 0/1 key puts trained tokens first, in order.
    rows = at::argsort(trained.logical_not().to(at::kByte), /*stable=*/true).narrow(0, 0, num_rows);
    row_targets = targets.index_select(0, rows);
    row_weights = token_weight.index_select(0, rows);
  } else {
    row_targets = targets;
    row_weights = token_weight;
  }

  const int64_t chunk =
      options.chunk_size > 0 ? options.chunk_size : default_chunk(vocab, hidden.element_size());
  at::Tensor logits = at::empty({std::min(chunk, num_rows), vocab}, hidden.options());
  at::Tensor row_nll = at::empty({num_rows}, f32);
  at::Tensor row_wnll = at::empty({num_rows}, f32);
  at::Tensor grad_hidden;
  if (!options.grad_hidden) {
    grad_hidden = at::empty({0}, hidden.options());
  } else if (compact) {
    grad_hidden = at::zeros_like(hidden);  // untrained rows are never written
  } else {
    grad_hidden = at::empty_like(hidden);  // every row is written by a chunk's dX GEMM
  }
  at::Tensor grad_w32;
  if (options.grad_weight) {
    const auto shape = weight.sizes();
    grad_w32 = num_rows == 0 ? at::zeros(shape, f32) : at::empty(shape, f32);
  }
  const at::Tensor weight_t = weight.t();

  for (int64_t start = 0; start < num_rows; start += chunk) {
    const int64_t len = std::min(chunk, num_rows - start);
    at::Tensor idx;
    at::Tensor x_c;
    if (compact) {
      idx = rows.narrow(0, start, len);
      x_c = hidden.index_select(0, idx);
    } else {
      x_c = hidden.narrow(0, start, len);
    }
    at::Tensor z_c = logits.narrow(0, 0, len);
    at::mm_out(z_c, x_c, weight_t);
    check_launch(
        launch_ce_rows(z_c.data_ptr(), logit_dtype(hidden.scalar_type()), len, vocab,
                       row_targets.data_ptr<int64_t>() + start,
                       row_weights.data_ptr<float>() + start, row_nll.data_ptr<float>() + start,
                       row_wnll.data_ptr<float>() + start, write_grad, stream),
        "ce_rows kernel launch");
    if (options.grad_hidden) {
      if (compact) {
        // Unique indices: deterministic, and allowed under torch.use_deterministic_algorithms.
        grad_hidden.index_put_({idx}, at::mm(z_c, weight));
      } else {
        at::Tensor out = grad_hidden.narrow(0, start, len);
        at::mm_out(out, z_c, weight);
      }
    }
    if (options.grad_weight) accumulate_grad_weight(grad_w32, z_c, x_c, start == 0);
  }
  // Free the logits chunk (1 GiB by default) now: the reductions below need none of it.
  logits = at::Tensor();

  // Fixed-order reductions: at::sum is deterministic on CUDA, segment sums use one block each.
  at::Tensor loss_sum = row_wnll.sum(at::kDouble).to(at::kFloat);
  at::Tensor token_nll = row_nll;
  if (compact) token_nll = at::zeros({num_tokens}, f32).index_put_({rows}, row_nll);
  at::Tensor seg_nll = at::empty({num_segments}, f32);
  at::Tensor seg_count = at::empty({num_segments}, hidden.options().dtype(at::kInt));
  check_launch(
      launch_segment_sums(token_nll.data_ptr<float>(), targets.data_ptr<int64_t>(),
                          cu_seqlens.data_ptr<int32_t>(), num_segments, num_tokens,
                          seg_nll.data_ptr<float>(), seg_count.data_ptr<int32_t>(), stream),
      "segment_sums kernel launch");

  // dW stays fp32: autograd's backward scales it by the incoming gradient and rounds to weight's
  // dtype once (rounding here too would round twice, and lose fp16's loss scale to underflow).
  at::Tensor grad_weight = options.grad_weight ? grad_w32 : at::empty({0}, f32);
  return {loss_sum, seg_nll, seg_count, grad_hidden, grad_weight};
}

}  // namespace segment_ce
}  // namespace natscale
