// Python binding of the segment-masked cross-entropy: every input check lives here, at the API
// boundary (device, dtype, shape, contiguity, int32 cu_seqlens), then CPU or CUDA is dispatched.
#include <torch/extension.h>

#include "segment_ce.h"

namespace natscale {
namespace segment_ce {
namespace {

// float16 is refused: the gradients are formed in the forward, before fp16 training's loss scale
// reaches them, so small ones would underflow to zero (bf16 has fp32's exponent range).
bool is_supported_float(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

void check_tensor(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, "segment_cross_entropy: ", name, " is on ", t.device(),
                    " but hidden is on ", device, "; move every input to the same device");
  TORCH_CHECK_VALUE(t.is_contiguous(), "segment_cross_entropy: ", name,
                    " must be contiguous; call .contiguous() on it");
}

void check_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                  const at::Tensor& token_weight, const at::Tensor& cu_seqlens,
                  const Options& options) {
  const at::Device device = hidden.device();
  TORCH_CHECK_VALUE(device.is_cpu() || device.is_cuda(), "segment_cross_entropy: tensors on ",
                    device, " are not supported (CPU or CUDA only)");
  // Under ZeRO-3 a parameter that is not gathered is a 1-D [0] placeholder: say so before any
  // shape check would report a confusing "must be [V, H]".
  TORCH_CHECK_VALUE(weight.numel() > 0,
                    "segment_cross_entropy: weight has no elements (shape ", weight.sizes(),
                    "); under ZeRO-3 the lm_head parameter is not gathered: call the op inside "
                    "the model's forward (or deepspeed.zero.GatheredParameters)");
  TORCH_CHECK_VALUE(hidden.dim() == 2, "segment_cross_entropy: hidden must be [T, H], got ",
                    hidden.sizes());
  TORCH_CHECK_VALUE(is_supported_float(hidden.scalar_type()),
                    "segment_cross_entropy: hidden must be bfloat16 or float32, got ",
                    hidden.scalar_type(),
                    hidden.scalar_type() == at::kHalf
                        ? "; float16 is not supported (its gradients would be formed before "
                          "the loss scale and underflow): train in bf16, or use "
                          "NATSCALE_SEGMENT_CE_IMPL=reference"
                        : "");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(1),
                    "segment_cross_entropy: weight must be [V, H] with H = ", hidden.size(1),
                    ", got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == hidden.scalar_type(),
                    "segment_cross_entropy: weight dtype ", weight.scalar_type(),
                    " differs from hidden dtype ", hidden.scalar_type());
  const int64_t num_tokens = hidden.size(0);
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == num_tokens,
                    "segment_cross_entropy: targets must be [T] with T = ", num_tokens, ", got ",
                    targets.sizes());
  TORCH_CHECK_VALUE(targets.scalar_type() == at::kLong,
                    "segment_cross_entropy: targets must be int64, got ", targets.scalar_type());
  TORCH_CHECK_VALUE(token_weight.dim() == 1 && token_weight.size(0) == num_tokens,
                    "segment_cross_entropy: token_weight must be [T] with T = ", num_tokens,
                    ", got ", token_weight.sizes());
  TORCH_CHECK_VALUE(token_weight.scalar_type() == at::kFloat,
                    "segment_cross_entropy: token_weight must be float32, got ",
                    token_weight.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1,
                    "segment_cross_entropy: cu_seqlens must be [S + 1] with S >= 0, got ",
                    cu_seqlens.sizes());
  TORCH_CHECK_VALUE(cu_seqlens.scalar_type() == at::kInt,
                    "segment_cross_entropy: cu_seqlens must be int32 (the flash-attn "
                    "convention), got ",
                    cu_seqlens.scalar_type(), "; use cu_seqlens.to(torch.int32)");
  check_tensor(hidden, "hidden", device);
  check_tensor(weight, "weight", device);
  check_tensor(targets, "targets", device);
  check_tensor(token_weight, "token_weight", device);
  check_tensor(cu_seqlens, "cu_seqlens", device);
  TORCH_CHECK_VALUE(options.num_trained >= -1 && options.num_trained <= num_tokens,
                    "segment_cross_entropy: num_trained must be in [0, T = ", num_tokens,
                    "] (or -1 for unknown), got ", options.num_trained);
  TORCH_CHECK_VALUE(options.chunk_size >= 0,
                    "segment_cross_entropy: chunk_size must be >= 0 (0 = default), got ",
                    options.chunk_size);
}

Outputs forward(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                const at::Tensor& token_weight, const at::Tensor& cu_seqlens, int64_t num_trained,
                int64_t chunk_size, bool grad_hidden, bool grad_weight) {
  const Options options{num_trained, chunk_size, grad_hidden, grad_weight};
  check_inputs(hidden, weight, targets, token_weight, cu_seqlens, options);
  if (hidden.is_cuda()) {
#ifdef NATSCALE_WITH_CUDA
    return forward_cuda(hidden, weight, targets, token_weight, cu_seqlens, options);
#else
    TORCH_CHECK(false,
                "segment_cross_entropy: this build of the extension is CPU-only; load the CUDA "
                "build for CUDA tensors");
#endif
  }
  return forward_cpu(hidden, weight, targets, token_weight, cu_seqlens, options);
}

}  // namespace
}  // namespace segment_ce
}  // namespace natscale

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "natscale segment-masked fused cross-entropy (lm_head + weighted CE per segment)";
  m.def("forward", &natscale::segment_ce::forward,
        "Loss, per-segment sums and counts, and (optionally) gradients; see segment_ce.h",
        py::arg("hidden"), py::arg("weight"), py::arg("targets"), py::arg("token_weight"),
        py::arg("cu_seqlens"), py::arg("num_trained"), py::arg("chunk_size"),
        py::arg("grad_hidden"), py::arg("grad_weight"), py::call_guard<py::gil_scoped_release>());
#ifdef NATSCALE_SOURCES_HASH  // h<16 hex digits>, from natscale/ops/builder.py
#define NATSCALE_STR2(x) #x
#define NATSCALE_STR(x) NATSCALE_STR2(x)
  m.attr("sources_hash") = std::string(NATSCALE_STR(NATSCALE_SOURCES_HASH)).substr(1);
#else
  m.attr("sources_hash") = "";
#endif
#ifdef NATSCALE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
