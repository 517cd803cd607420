// Torch-side declarations of the segment-masked cross-entropy (see DESIGN.md, "The segment loss
// op").
//
// Legend: T tokens, H hidden size, V vocabulary, S segments, C tokens per chunk.
// forward_* compute the loss and, when asked, its gradients in the same pass (gradient-in-forward):
//   loss_sum    fp32 []     sum_t token_weight[t] * nll[t] over trained tokens (targets != -100)
//   seg_nll     fp32 [S]    per-segment sum of nll over trained tokens
//   seg_count   int32 [S]   per-segment number of trained tokens
//   grad_hidden [T, H]      d loss_sum / d hidden in hidden's dtype, or [0] when not asked
//   grad_weight [V, H]      d loss_sum / d weight in fp32 (rounded to weight's dtype once, after
//                           backward's scaling), or [0]
// Inputs are validated by forward() in segment_ce_api.cpp before these are called.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace natscale {
namespace segment_ce {

constexpr int64_t kIgnore = -100;

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct Options {
  int64_t num_trained;  // host-known number of trained tokens, or -1 when unknown
  int64_t chunk_size;   // tokens per chunk, or 0 for the default (memory budget per chunk)
  bool grad_hidden;
  bool grad_weight;
};

Outputs forward_cpu(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                    const at::Tensor& token_weight, const at::Tensor& cu_seqlens,
                    const Options& options);

#ifdef NATSCALE_WITH_CUDA
Outputs forward_cuda(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                     const at::Tensor& token_weight, const at::Tensor& cu_seqlens,
                     const Options& options);
#endif

}  // namespace segment_ce
}  // namespace natscale
