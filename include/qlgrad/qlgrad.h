#pragma once
// qlgrad: input gradients through PyTorch's dynamically quantized int8 linear layers.
//
// Linking libqlgrad registers an Autograd kernel for quantized::linear_dynamic, so
// autograd propagates grad_input = grad_output @ W_deq (straight-through estimator)
// through every dynamically quantized nn.Linear, and one for
// aten::_weight_int4pack_mm_for_cpu (grad_input = grad_output @ W). The functions below
// expose the same backward math without an autograd graph.

#include <ATen/core/Tensor.h>
#include <ATen/native/quantized/PackedParams.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#define QLGRAD_API __attribute__((visibility("default")))

namespace qlgrad {

// How the input-gradient GEMM runs:
//   kFloat32  exact to float32 rounding ("fp32"): grad_output times the scale, against the
//             int8 codes converted tile by tile (no float copy of the weight is kept);
//   kBFloat16 the same in bfloat16 with float32 accumulation ("bf16"): the codes are exact
//             in bfloat16, so only grad_output times the scale is rounded;
//   kInt8     grad_output quantized per row to symmetric int8, integer GEMM against the
//             int8 weight with int32 accumulation ("int8").
// Results always have grad_output's dtype.
enum class Precision : int8_t { kFloat32, kBFloat16, kInt8 };

// Every precision, in the order of the enum.
inline constexpr std::array<Precision, 3> kPrecisions{Precision::kFloat32, Precision::kBFloat16, Precision::kInt8};

// The precision named `name` (precision_name() of one of kPrecisions); any other name is
// refused with the list of valid ones.
QLGRAD_API Precision parse_precision(std::string_view name);
QLGRAD_API const char* precision_name(Precision precision);

// Which precision a backward runs in. A precision may be chosen: by the backward function's
// `precision` argument, else this thread's BackwardPrecisionGuard, else set_backward_precision,
// else the environment variable QLGRAD_BACKWARD_PRECISION (read once, as set_backward_precision's
// initial value). A choice applies to gradients of every dtype. Where none was chosen, the
// precision follows the gradient's dtype: kBFloat16 for a bfloat16 grad_output, kFloat32 for
// every other dtype (float32, float16, float64).

// The process-wide choice; std::nullopt chooses none: backward follows the gradient's dtype.
QLGRAD_API void set_backward_precision(std::optional<Precision> precision);
QLGRAD_API void set_backward_precision(Precision precision);
// The choice in effect on this thread: its BackwardPrecisionGuard, else the process-wide one;
// std::nullopt where none was chosen. The Autograd kernels record it when the forward runs, as
// autocast records its dtype, and resolve it against grad_output's dtype when backward runs.
QLGRAD_API std::optional<Precision> chosen_backward_precision();
// The precision a backward runs in for the choice `chosen` and a grad_output of dtype
// `grad_dtype`: `chosen` where there is one, else kBFloat16 for bfloat16 and kFloat32 for
// every other dtype.
QLGRAD_API Precision effective_backward_precision(std::optional<Precision> chosen, at::ScalarType grad_dtype);
// The precision in effect on this thread for float32 gradients:
// effective_backward_precision(chosen_backward_precision(), at::kFloat). kFloat32 where none
// was chosen, and bfloat16 gradients then run kBFloat16.
QLGRAD_API Precision get_backward_precision();

// Overrides the process-wide choice on this thread for its lifetime; std::nullopt leaves
// it in effect.
class QLGRAD_API BackwardPrecisionGuard {
 public:
  explicit BackwardPrecisionGuard(std::optional<Precision> precision);
  ~BackwardPrecisionGuard();
  BackwardPrecisionGuard(const BackwardPrecisionGuard&) = delete;
  BackwardPrecisionGuard& operator=(const BackwardPrecisionGuard&) = delete;

 private:
  std::optional<Precision> previous_;
};

// grad_output [..., N] @ dequantize(W) [N, K] -> [..., K] for the weight inside the
// packed params that quantized::linear_dynamic takes: read in place where fbgemm packed it
// (the x86 and fbgemm engines), else from the weight cache.
// Differentiable with respect to grad_output. precision: absent for
// effective_backward_precision(chosen_backward_precision(), grad_output.scalar_type()).
QLGRAD_API at::Tensor linear_dynamic_backward(const at::Tensor& grad_output,
                                              const c10::intrusive_ptr<LinearPackedParamsBase>& packed,
                                              std::optional<Precision> precision = std::nullopt);

// The same for the fp16-packed params that quantized::linear_dynamic_fp16 takes:
// grad_output @ W with W the float16 weight widened to float32 (int8 precision runs as
// fp32 here: the weight has no int8 form).
QLGRAD_API at::Tensor linear_dynamic_fp16_backward(const at::Tensor& grad_output,
                                                   const c10::intrusive_ptr<LinearPackedParamsBase>& packed,
                                                   std::optional<Precision> precision = std::nullopt);

// Unpacks the weight of `packed` (int8 or fp16) into the weight cache now, so that the first
// backward does not pay for unpacking. Every precision reads the same entry. Weights that
// fbgemm packed are read in place and never cached: for them this does nothing.
QLGRAD_API void cache_weight(const c10::intrusive_ptr<LinearPackedParamsBase>& packed);

// grad_output [..., N] @ (scale * (weight - zero_point)) -> [..., K] on plain tensors:
// weight int8 [N, K]; scale floating, one element (per tensor), [N] (per output channel)
// or [N, G] (group-wise: scale[n, k / (K / G)] for K a multiple of G); zero_point integer,
// shaped like scale, absent for a symmetric weight. No quantized dtype is involved.
// Differentiable with respect to grad_output; scale and zero_point are constants. int8
// precision runs as fp32 for group-wise scales.
QLGRAD_API at::Tensor linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight,
                                           const at::Tensor& scale,
                                           const std::optional<at::Tensor>& zero_point = std::nullopt,
                                           std::optional<Precision> precision = std::nullopt);

// grad_output [..., N] @ W -> [..., K] for the int4 weight that
// aten::_weight_int4pack_mm_for_cpu(x, weight_int4pack, group_size, scale_and_zeros) multiplies
// by, W[n, k] = (code[n, k] - 8) * scale_and_zeros[k / group_size, n, 0]
// + scale_and_zeros[k / group_size, n, 1], read from the packing in place (no copy of the
// weight is made or kept). weight_int4pack: uint8 [N, K / 2] from
// aten::_convert_weight_to_int4pack_for_cpu in this process's CPU capability; group_size 32, 64,
// 128 or 256; scale_and_zeros floating [K / group_size, N, 2]. Differentiable with respect to
// grad_output. bf16 multiplies in bfloat16 (the packing's values rounded to bfloat16, float32
// sums) on CPUs with AVX512-BF16, past 4 rows; int8, for which the weight has no form, and bf16
// elsewhere run as fp32.
QLGRAD_API at::Tensor linear_int4pack_backward(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                               int64_t group_size, const at::Tensor& scale_and_zeros,
                                               std::optional<Precision> precision = std::nullopt);

// The instruction set of qlgrad's kernels: "default" (portable), "avx2" or "avx512". It is
// ATen's CPU capability, so ATEN_CPU_CAPABILITY chooses it as it chooses ATen's kernels.
QLGRAD_API const char* cpu_capability();

// The extensions beyond that instruction set which qlgrad's kernels use, those of "avx512_bf16"
// (bfloat16 dot products), "avx512_vnni" (int8 dot products) and "amx" (AMX tiles with bfloat16
// and int8 products) that the CPU has, space-separated ("" for none). QLGRAD_AVX512_BF16=0,
// QLGRAD_AVX512_VNNI=0 and QLGRAD_AMX=0 leave one out (AMX goes with either of the others).
QLGRAD_API const char* cpu_extensions();

// The cache of unpacked weights (those of engines other than fbgemm's, and fp16 weights): one
// entry per packed-params object, shared by every precision, holding the weight as stored
// (int8 codes with their scales and zero points, about 1 byte per element; float16 for
// fp16-packed layers). An entry is dropped when its object is destroyed, or when the byte
// limit needs room for a layer asked for more often.
struct CacheInfo {
  int64_t entries;
  int64_t bytes;
  int64_t hits;
  int64_t misses;
  int64_t limit_bytes;
};

// The largest limit set_cache_limit takes, 2**62 bytes (4 EiB). No machine holds that much
// memory: a larger value is an overflow (such as an unsigned -1) or a unit mistake, not a limit.
inline constexpr int64_t kMaxCacheLimitBytes = int64_t{1} << 62;

QLGRAD_API CacheInfo cache_info();
QLGRAD_API void clear_cache();
// bytes in [0, kMaxCacheLimitBytes]; 0 disables caching; the default is 1.5 GiB. Shrinking the
// limit evicts least recently used entries at once.
QLGRAD_API void set_cache_limit(int64_t bytes);

} // namespace qlgrad
