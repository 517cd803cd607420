// Torch-free CUDA kernels of the segment-masked cross-entropy (see DESIGN.md, "The segment loss
// op").
//
// This header and segment_ce_kernels.cu need only the CUDA toolkit, so CI compiles them with a
// plain `nvcc -arch=sm_90 -c` on machines without a GPU or a CUDA build of torch. The torch binding
// (segment_ce_cuda.cpp) does the chunking and the GEMMs and calls these launchers on its stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace natscale {
namespace segment_ce {

constexpr int64_t kIgnoreIndex = -100;

enum class LogitDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One block per row r of `logits` [num_rows, vocab] (row-major, contiguous, dtype `dtype`):
//   lse       = log(sum_j exp(z_j)), max and sum in one online pass, fp32;
//   nll[r]    = lse - z_y for y = targets[r]; 0 where y == -100; NaN where y is outside [0, vocab);
//   wnll[r]   = row_weight[r] * nll[r] (0 where y == -100);
//   if write_grad: z_j <- row_weight[r] * (softmax_j - [j == y]) in place, computed in fp32
//   (p_y - 1 included) and rounded once to the logits dtype; rows with y == -100 become 0.
// Deterministic: every row is reduced by one block in a fixed order. No atomics, no host sync.
cudaError_t launch_ce_rows(void* logits, LogitDType dtype, int64_t num_rows, int64_t vocab,
                           const int64_t* targets, const float* row_weight, float* nll, float* wnll,
                           bool write_grad, cudaStream_t stream);

// One block per segment s: the tokens [cu_seqlens[s], cu_seqlens[s+1]) clamped to [0, num_tokens)
// (an empty range where the offsets decrease), in a fixed order:
//   seg_nll[s]   = sum of nll[t] (fp64 accumulation), seg_count[s] = #{t : targets[t] != -100}.
// Values of cu_seqlens are not trusted (checking them would need a host sync): bad offsets give
// empty or clamped segments, never an out-of-bounds read.
cudaError_t launch_segment_sums(const float* nll, const int64_t* targets, const int32_t* cu_seqlens,
                                int64_t num_segments, int64_t num_tokens, float* seg_nll,
                                int32_t* seg_count, cudaStream_t stream);

}  // namespace segment_ce
}  // namespace natscale
