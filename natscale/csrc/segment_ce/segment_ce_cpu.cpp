// CPU implementation of the segment-masked cross-entropy.
//
// Untrained tokens are dropped before any GEMM; the trained ones are processed in chunks of C
// tokens so only a [C, V] fp32 logits buffer exists. Per chunk: logits = X_c W^T (fp32 GEMM), a
// fused per-row pass turns them into w * softmax in place (rows in parallel through ATen's OpenMP
// pool), dX_c = (w P) W - w W_y (vocabulary blocks summed in fp64), then the one-hot term goes
// in and dW += dZ^T X_c (fp32).
// 16-bit inputs are computed in fp32 and rounded once at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "segment_ce.h"

namespace natscale {
namespace segment_ce {
namespace {

constexpr int64_t kDefaultChunkBytes = 64LL << 20;  // fp32 logits per chunk
constexpr int64_t kDxVocabBlock = 2048;             // vocabulary block of the dX reduction

// exp(x) within ~1 ulp (Cephes' expf polynomial), written so the compiler vectorizes it (needs
// -fno-trapping-math to if-convert the clamps). Returns 0 below -87.3 (exp underflows there
// anyway) and NaN for NaN. Callers pass x <= 0.
inline __attribute__((always_inline)) float vec_expf(float x) {
  const bool underflow = x < -87.3f;
  float xc = x > 88.0f ? 88.0f : x;
  xc = underflow ? -87.3f : xc;           // NaN passes through both clamps
  const float xn = xc == xc ? xc : 0.0f;  // NaN-free copy for the integer part
  // Round to nearest by adding 1.5 * 2^23 (no SSE4.1 floor needed; |xn * log2e| < 2^22).
  const float n = (xn * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;  // ln 2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return underflow ? 0.0f : e_r * __builtin_bit_cast(float, bits);
}

// One logits row z[0, V): returns nll = logsumexp(z) - z[y]. If write_grad, rewrites z in place
// with w * softmax (the one-hot term is left out) and returns w * (p_y - 1) in *grad_y, formed
// in fp64. Sums in fp64. Cloned per ISA, picked at load time.
__attribute__((target_clones("avx512f", "avx2", "default"))) float ce_row(float* __restrict__ z,
                                                                          int64_t vocab, int64_t y,
                                                                          float w, bool write_grad,
                                                                          float* grad_y) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < vocab; ++j) m = z[j] > m ? z[j] : m;
  const float z_y = z[y];
  double s = 0.0;
  // Keeps exp(z - m) in z for the gradient; a NaN logit makes s (and the loss) NaN.
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < vocab; ++j) {
    const float e = vec_expf(z[j] - m);
    z[j] = e;
    s += e;
  }
  const double lse = static_cast<double>(m) + std::log(s);
  if (write_grad) {
    const float scale = static_cast<float>(w / s);
#pragma omp simd
    for (int64_t j = 0; j < vocab; ++j) z[j] *= scale;
    *grad_y = static_cast<float>((std::exp(static_cast<double>(z_y) - lse) - 1.0) * w);
  }
  return static_cast<float>(lse - z_y);
}

void check_values(const int64_t* targets, int64_t num_tokens, int64_t vocab, const int32_t* cu,
                  int64_t num_segments) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t y = targets[t];
    TORCH_CHECK_VALUE(y == kIgnore || (y >= 0 && y < vocab), "segment_cross_entropy: targets[", t,
                      "] = ", y, " is outside [0, V = ", vocab, ") and is not -100");
  }
  TORCH_CHECK_VALUE(cu[0] == 0, "segment_cross_entropy: cu_seqlens[0] must be 0, got ", cu[0]);
  for (int64_t s = 0; s < num_segments; ++s) {
    TORCH_CHECK_VALUE(cu[s + 1] >= cu[s],
                      "segment_cross_entropy: cu_seqlens must be "
                      "non-decreasing, got cu_seqlens[",
                      s + 1, "] = ", cu[s + 1], " < cu_seqlens[", s, "] = ", cu[s]);
  }
  TORCH_CHECK_VALUE(cu[num_segments] <= num_tokens,
                    "segment_cross_entropy: cu_seqlens[-1] = ", cu[num_segments],
                    " exceeds the number of tokens T = ", num_tokens);
}

// grad_hidden[rows[r]] = sum of the block products (fp64) - w_r * W[y_r], rounded once to the
// hidden dtype; one parallel pass instead of a chain of small tensor ops.
void finish_grad_hidden(const at::Tensor& parts, const at::Tensor& tail, const at::Tensor& w32,
                        const int64_t* rows, int64_t len, const int64_t* targets,
                        const float* token_weight, at::Tensor& grad_hidden) {
  const int64_t hidden_size = w32.size(1);
  const int64_t num_blocks = parts.defined() ? parts.size(0) : 0;
  const float* parts_p = parts.defined() ? parts.data_ptr<float>() : nullptr;
  const float* tail_p = tail.defined() ? tail.data_ptr<float>() : nullptr;
  const float* w_p = w32.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_hidden.scalar_type(), "segment_ce_grad_hidden", [&] {
        scalar_t* out = grad_hidden.data_ptr<scalar_t>();
        at::parallel_for(0, len, 1, [&](int64_t begin, int64_t end) {
          std::vector<double> acc(hidden_size);
          for (int64_t r = begin; r < end; ++r) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t b = 0; b < num_blocks; ++b) {
              const float* part = parts_p + (b * len + r) * hidden_size;
              for (int64_t h = 0; h < hidden_size; ++h) acc[h] += part[h];
            }
            if (tail_p != nullptr) {
              for (int64_t h = 0; h < hidden_size; ++h) acc[h] += tail_p[r * hidden_size + h];
            }
            const int64_t t = rows[r];
            const double w = token_weight[t];
            const float* w_y = w_p + targets[t] * hidden_size;
            scalar_t* dst = out + t * hidden_size;
            for (int64_t h = 0; h < hidden_size; ++h) {
              dst[h] = static_cast<scalar_t>(static_cast<float>(acc[h] - w * w_y[h]));
            }
          }
        });
      });
}

int64_t default_chunk(int64_t vocab) {
  const int64_t rows = kDefaultChunkBytes / (vocab * static_cast<int64_t>(sizeof(float)));
  return std::max<int64_t>(16, rows / 16 * 16);
}

}  // namespace

Outputs forward_cpu(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                    const at::Tensor& token_weight, const at::Tensor& cu_seqlens,
                    const Options& options) {
  const int64_t num_tokens = hidden.size(0);
  const int64_t vocab = weight.size(0);
  const int64_t num_segments = cu_seqlens.size(0) - 1;
  const int64_t* tgt = targets.data_ptr<int64_t>();
  const float* tok_w = token_weight.data_ptr<float>();
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  check_values(tgt, num_tokens, vocab, cu, num_segments);

  std::vector<int64_t> rows;  // trained tokens, in order
  rows.reserve(num_tokens);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (tgt[t] != kIgnore) rows.push_back(t);
  }
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  TORCH_CHECK_VALUE(options.num_trained < 0 || options.num_trained == num_rows,
                    "segment_cross_entropy: num_trained = ", options.num_trained, " but ", num_rows,
                    " targets are not -100");

  const auto f32 = hidden.options().dtype(at::kFloat);
  const bool write_grad = options.grad_hidden || options.grad_weight;
  const at::Tensor w32 = weight.to(at::kFloat);  // no copy for fp32 weights
  const at::Tensor rows_t = at::from_blob(rows.data(), {num_rows}, at::kLong);
  const int64_t hidden_size = weight.size(1);
  const int64_t chunk = options.chunk_size > 0 ? options.chunk_size : default_chunk(vocab);
  at::Tensor logits = at::empty({std::min(chunk, num_rows), vocab}, f32);
  at::Tensor grad_hidden =
      options.grad_hidden ? at::zeros_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor grad_w32 =
      options.grad_weight ? at::zeros({vocab, weight.size(1)}, f32) : at::Tensor();
  std::vector<float> nll(num_tokens, 0.0f);

  std::vector<float> grad_y(std::min(chunk, num_rows));
  for (int64_t start = 0; start < num_rows; start += chunk) {
    const int64_t len = std::min(chunk, num_rows - start);
    const at::Tensor idx = rows_t.narrow(0, start, len);
    const at::Tensor x_c = hidden.index_select(0, idx).to(at::kFloat);
    at::Tensor z_c = logits.narrow(0, 0, len);
    at::mm_out(z_c, x_c, w32.t());
    float* z = z_c.data_ptr<float>();
    at::parallel_for(0, len, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = rows[start + r];
        nll[t] = ce_row(z + r * vocab, vocab, tgt[t], tok_w[t], write_grad, &grad_y[r]);
      }
    });
    if (!write_grad) continue;
    if (options.grad_hidden) {
      // dX = (w P) W - w W_y. The V-long reduction runs as one batched fp32 GEMM over
      // vocabulary blocks whose results are summed in fp64: MKL reduces a GEMM with few rows
      // sequentially over all of V and loses ~sqrt(V) ulps. The -W_y term stays out of it too.
      const int64_t num_blocks = vocab / kDxVocabBlock;
      const int64_t blocked = num_blocks * kDxVocabBlock;
      at::Tensor parts, tail;  // [num_blocks, C, H] and [C, H], fp32
      if (num_blocks > 0) {
        parts = at::bmm(
            z_c.narrow(1, 0, blocked).view({len, num_blocks, kDxVocabBlock}).transpose(0, 1),
            w32.narrow(0, 0, blocked).view({num_blocks, kDxVocabBlock, hidden_size}));
      }
      if (blocked < vocab) {
        tail = at::mm(z_c.narrow(1, blocked, vocab - blocked),
                      w32.narrow(0, blocked, vocab - blocked));
      }
      finish_grad_hidden(parts, tail, w32, rows.data() + start, len, tgt, tok_w, grad_hidden);
    }
    if (options.grad_weight) {
      for (int64_t r = 0; r < len; ++r) z[r * vocab + tgt[rows[start + r]]] = grad_y[r];
      grad_w32.addmm_(z_c.t(), x_c);
    }
  }

  double loss = 0.0;
  for (const int64_t t : rows) loss += static_cast<double>(tok_w[t]) * nll[t];
  at::Tensor seg_nll = at::empty({num_segments}, f32);
  at::Tensor seg_count = at::empty({num_segments}, hidden.options().dtype(at::kInt));
  float* seg_nll_p = seg_nll.data_ptr<float>();
  int32_t* seg_count_p = seg_count.data_ptr<int32_t>();
  for (int64_t s = 0; s < num_segments; ++s) {
    double sum = 0.0;
    int32_t count = 0;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      if (tgt[t] == kIgnore) continue;
      sum += nll[t];
      ++count;
    }
    seg_nll_p[s] = static_cast<float>(sum);
    seg_count_p[s] = count;
  }
  // dW stays fp32: autograd's backward scales it and rounds to weight's dtype once.
  at::Tensor grad_weight = options.grad_weight ? grad_w32 : at::empty({0}, f32);
  return {at::full({}, static_cast<float>(loss), f32), seg_nll, seg_count, grad_hidden,
          grad_weight};
}

}  // namespace segment_ce
}  // namespace natscale
