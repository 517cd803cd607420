// Torch-free CUDA kernels of the segment-masked cross-entropy; see segment_ce_kernels.cuh.
//
// Legend: V vocabulary, kVec elements per 16-byte load, one thread block per logits row.
#include "segment_ce_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

namespace natscale {
namespace segment_ce {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxRowThreads = 1024;
constexpr int kSegmentThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// fp32 <-> storage dtype. Stores round to nearest even, once.
template <typename T>
struct Io;
template <>
struct Io<float> {
  __device__ __forceinline__ static float load(float x) { return x; }
  __device__ __forceinline__ static float store(float x) { return x; }
};
template <>
struct Io<__half> {
  __device__ __forceinline__ static float load(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half store(float x) { return __float2half_rn(x); }
};
template <>
struct Io<__nv_bfloat16> {
  __device__ __forceinline__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ __forceinline__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

// kVec elements moved by one 16-byte (kVec > 1) or scalar (kVec == 1) load/store.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Max that propagates NaN (fmaxf drops it): a NaN logit must make the loss NaN, not vanish.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// Running softmax statistics: m = max seen, s = sum of exp(z - m).
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = nan_max(a.m, b.m);
  // Both sides empty: exp(-inf - -inf) would be NaN.
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Lane 0 ends with the warp's result (fixed shuffle order, so the result is deterministic).
__device__ __forceinline__ MaxSum warp_reduce(MaxSum v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_down_sync(kFullMask, v.m, offset),
                       __shfl_down_sync(kFullMask, v.s, offset)};
    v = combine(v, other);
  }
  return v;
}

// Block-wide reduction; every thread gets the result. blockDim.x must be a multiple of 32.
// Contains two __syncthreads(): callers rely on them to order reads before later writes.
__device__ MaxSum block_reduce(MaxSum v, MaxSum* warp_buf) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int num_warps = blockDim.x / kWarp;
  v = warp_reduce(v);
  if (lane == 0) warp_buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < num_warps ? warp_buf[lane] : MaxSum{-INFINITY, 0.f};
    v = warp_reduce(v);
    // Warp 0's reads of warp_buf happened before the shuffles above, so lane 0 may overwrite.
    if (lane == 0) warp_buf[0] = v;
  }
  __syncthreads();
  return warp_buf[0];
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_rows_kernel(T* __restrict__ logits, int64_t vocab, const int64_t* __restrict__ targets,
                   const float* __restrict__ row_weight, float* __restrict__ nll,
                   float* __restrict__ wnll, bool write_grad) {
  using P = Pack<T, kVec>;
  __shared__ MaxSum warp_buf[kWarp];

  const int64_t row = blockIdx.x;
  // The launcher picks kVec so that it divides vocab and every row start is 16-byte aligned.
  P* __restrict__ row_packs = reinterpret_cast<P*>(logits + row * vocab);
  const int64_t num_packs = vocab / kVec;
  const int64_t y = targets[row];

  if (y == kIgnoreIndex) {  // uniform across the block: no barrier is skipped by only some threads
    if (write_grad) {
      P zero;
#pragma unroll
      for (int k = 0; k < kVec; ++k) zero.v[k] = Io<T>::store(0.f);
      for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) row_packs[i] = zero;
    }
    if (threadIdx.x == 0) {
      nll[row] = 0.f;
      if (wnll != nullptr) wnll[row] = 0.f;
    }
    return;
  }
  const bool valid_target = y >= 0 && y < vocab;

  // Thread 0 reads the target logit now: the gradient pass overwrites it, but only after the
  // barriers inside block_reduce.
  float z_y = 0.f;
  if (threadIdx.x == 0 && valid_target) z_y = Io<T>::load(logits[row * vocab + y]);

  // Pass 1: online max and sum of exponentials, one rescale per pack.
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
    const P p = row_packs[i];
    float x[kVec];
    float pack_max = -INFINITY;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      x[k] = Io<T>::load(p.v[k]);
      pack_max = nan_max(pack_max, x[k]);
    }
    const float m = nan_max(acc.m, pack_max);
    if (m == -INFINITY) continue;  // only -inf so far: every term is 0
    float s = acc.s * expf(acc.m - m);
#pragma unroll
    for (int k = 0; k < kVec; ++k) s += expf(x[k] - m);
    acc = {m, s};
  }
  const MaxSum total = block_reduce(acc, warp_buf);
  const float lse = total.m + logf(total.s);
  const float w = row_weight[row];

  if (threadIdx.x == 0) {
    const float row_nll = valid_target ? lse - z_y : NAN;
    nll[row] = row_nll;
    if (wnll != nullptr) wnll[row] = w * row_nll;
  }
  if (!write_grad) return;

  // Pass 2: dlogits in place. Each thread rewrites exactly the packs it read in pass 1.
  for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
    const P p = row_packs[i];
    P out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float prob = expf(Io<T>::load(p.v[k]) - lse);
      // p_y - 1 is formed in fp32 before the single rounding to T (bf16 would cancel to 0).
      const float g = (i * kVec + k == y) ? prob - 1.f : prob;
      out.v[k] = Io<T>::store(g * w);
    }
    row_packs[i] = out;
  }
}

__device__ __forceinline__ void warp_reduce_sum_count(double& sum, int& count) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(kFullMask, sum, offset);
    count += __shfl_down_sync(kFullMask, count, offset);
  }
}

__global__ void __launch_bounds__(kSegmentThreads)
    segment_sums_kernel(const float* __restrict__ nll, const int64_t* __restrict__ targets,
                        const int32_t* __restrict__ cu_seqlens, int64_t num_tokens,
                        float* __restrict__ seg_nll, int32_t* __restrict__ seg_count) {
  __shared__ double sum_buf[kWarp];
  __shared__ int count_buf[kWarp];
  const int64_t seg = blockIdx.x;
  const int64_t lo = cu_seqlens[seg];
  const int64_t hi = cu_seqlens[seg + 1];
  const int64_t begin = lo < 0 ? 0 : (lo > num_tokens ? num_tokens : lo);
  const int64_t end = hi < begin ? begin : (hi > num_tokens ? num_tokens : hi);

  double sum = 0.0;
  int count = 0;
  for (int64_t t = begin + threadIdx.x; t < end; t += blockDim.x) {
    if (targets[t] != kIgnoreIndex) {
      sum += static_cast<double>(nll[t]);
      ++count;
    }
  }
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  warp_reduce_sum_count(sum, count);
  if (lane == 0) {
    sum_buf[warp] = sum;
    count_buf[warp] = count;
  }
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x / kWarp;
    sum = lane < num_warps ? sum_buf[lane] : 0.0;
    count = lane < num_warps ? count_buf[lane] : 0;
    warp_reduce_sum_count(sum, count);
    if (lane == 0) {
      seg_nll[seg] = static_cast<float>(sum);
      seg_count[seg] = count;
    }
  }
}

template <typename T>
cudaError_t launch_ce_rows_typed(void* logits, int64_t num_rows, int64_t vocab,
                                 const int64_t* targets, const float* row_weight, float* nll,
                                 float* wnll, bool write_grad, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  T* z = static_cast<T*>(logits);
  const bool vectorized = reinterpret_cast<uintptr_t>(logits) % 16 == 0 && vocab % kVec == 0;
  const int64_t units = vectorized ? vocab / kVec : vocab;
  // At least ~8 loads per thread; the block size depends on vocab only (deterministic).
  int threads = kWarp;
  while (threads < kMaxRowThreads && static_cast<int64_t>(threads) * 8 < units) threads *= 2;
  const dim3 grid(static_cast<unsigned>(num_rows));
  if (vectorized) {
    ce_rows_kernel<T, kVec>
        <<<grid, threads, 0, stream>>>(z, vocab, targets, row_weight, nll, wnll, write_grad);
  } else {
    ce_rows_kernel<T, 1>
        <<<grid, threads, 0, stream>>>(z, vocab, targets, row_weight, nll, wnll, write_grad);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_ce_rows(void* logits, LogitDType dtype, int64_t num_rows, int64_t vocab,
                           const int64_t* targets, const float* row_weight, float* nll, float* wnll,
                           bool write_grad, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (num_rows < 0 || num_rows > INT_MAX || vocab <= 0 || vocab > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case LogitDType::kFloat32:
      return launch_ce_rows_typed<float>(logits, num_rows, vocab, targets, row_weight, nll, wnll,
                                         write_grad, stream);
    case LogitDType::kFloat16:
      return launch_ce_rows_typed<__half>(logits, num_rows, vocab, targets, row_weight, nll, wnll,
                                          write_grad, stream);
    case LogitDType::kBFloat16:
      return launch_ce_rows_typed<__nv_bfloat16>(logits, num_rows, vocab, targets, row_weight, nll,
                                                 wnll, write_grad, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_segment_sums(const float* nll, const int64_t* targets, const int32_t* cu_seqlens,
                                int64_t num_segments, int64_t num_tokens, float* seg_nll,
                                int32_t* seg_count, cudaStream_t stream) {
  if (num_segments == 0) return cudaSuccess;
  if (num_segments < 0 || num_segments > INT_MAX) return cudaErrorInvalidValue;
  segment_sums_kernel<<<static_cast<unsigned>(num_segments), kSegmentThreads, 0, stream>>>(
      nll, targets, cu_seqlens, num_tokens, seg_nll, seg_count);
  return cudaGetLastError();
}

}  // namespace segment_ce
}  // namespace natscale
