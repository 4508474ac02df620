// The public C++ functions of <qlgrad/qlgrad.h> that compute gradients, and cpu_capability() and
// cpu_extensions().
// Each backward calls its qlgrad:: operator through the dispatcher, so that C++ callers get
// autograd too.

#include "kernels/instruction_set.h"
#include "qlgrad_ops.h"

#include <qlgrad/qlgrad.h>

#include <string>
#include <utility>

namespace qlgrad {
namespace {

detail::PrecisionName name_of(std::optional<Precision> precision) {
  return precision ? detail::PrecisionName(precision_name(*precision)) : std::nullopt;
}

} // namespace

at::Tensor linear_dynamic_backward(const at::Tensor& grad_output, const detail::PackedParams& packed,
                                   std::optional<Precision> precision) {
  return detail::call_packed_backward(detail::WeightKind::kQInt8, grad_output, packed, name_of(precision));
}

at::Tensor linear_dynamic_fp16_backward(const at::Tensor& grad_output, const detail::PackedParams& packed,
                                        std::optional<Precision> precision) {
  return detail::call_packed_backward(detail::WeightKind::kFloat16, grad_output, packed, name_of(precision));
}

at::Tensor linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point, std::optional<Precision> precision) {
  return detail::call_linear_int8_backward(grad_output, weight, scale, zero_point, name_of(precision));
}

at::Tensor linear_int4pack_backward(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                    int64_t group_size, const at::Tensor& scale_and_zeros,
                                    std::optional<Precision> precision) {
  return detail::call_linear_int4pack_backward(grad_output, weight_int4pack, group_size, scale_and_zeros,
                                               name_of(precision));
}

void cache_weight(const detail::PackedParams& packed) {
  detail::call_cache_weight(packed);
}

const char* cpu_capability() {
  return math::instruction_set_name(math::instruction_set());
}

const char* cpu_extensions() {
  static const std::string extensions = [] {
    std::string names;
    for (const auto& [used, name] :
         {std::pair{math::has_avx512_bf16(), "avx512_bf16"}, std::pair{math::has_avx512_vnni(), "avx512_vnni"},
          std::pair{math::has_amx(), "amx"}}) {
      if (used) {
        names += (names.empty() ? "" : " ") + std::string(name);
      }
    }
    return names;
  }();
  return extensions.c_str();
}

} // namespace qlgrad
