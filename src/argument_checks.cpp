#include "argument_checks.h"

#include <ATen/ATen.h>

namespace qlgrad::detail {
namespace {

void check_plain_tensor(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_TYPE(tensor.defined(), "qlgrad: ", name, " must be a tensor, got None (an undefined tensor)");
  TORCH_CHECK_TYPE(!tensor.is_quantized(), "qlgrad: ", name, " must be a plain tensor, got a quantized one (",
                   tensor.scalar_type(), "); pass its int_repr() and its scale and zero point instead");
  TORCH_CHECK_TYPE(tensor.layout() == at::kStrided, "qlgrad: ", name, " must be a strided (dense) tensor, got layout ",
                   tensor.layout());
}

void check_device(const at::Tensor& tensor, const char* name, c10::Device expected, const char* whose) {
  TORCH_CHECK_VALUE(tensor.device() == expected, "qlgrad: ", name, " must be on ", whose, " (", expected, "), got ",
                    tensor.device());
}

} // namespace

void check_int8_tensors(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero_point) {
  check_plain_tensor(weight, "weight");
  check_plain_tensor(grad_output, "grad_output");
  check_plain_tensor(scale, "scale");
  check_device(grad_output, "grad_output", weight.device(), "the weight's device");
  check_device(scale, "scale", weight.device(), "the weight's device");
  if (zero_point) {
    check_plain_tensor(*zero_point, "zero_point");
    check_device(*zero_point, "zero_point", weight.device(), "the weight's device");
  }
}

void check_packed_tensors(const at::Tensor& grad_output) {
  check_plain_tensor(grad_output, "grad_output");
  check_device(grad_output, "grad_output", at::kCPU, "the device of packed weights");
}

void check_grad_output(const at::Tensor& grad_output, int64_t out_features) {
  TORCH_CHECK_TYPE(at::isFloatingType(grad_output.scalar_type()),
                   "qlgrad: grad_output must be a floating-point tensor, got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.dim() >= 1, "qlgrad: grad_output must have at least 1 dimension, got a 0-dim tensor");
  TORCH_CHECK_VALUE(grad_output.size(-1) == out_features,
                    "qlgrad: grad_output's last dimension must equal the weight's out_features (", out_features,
                    "), got shape ", grad_output.sizes());
}

void check_int8_arguments(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point) {
  check_int8_tensors(grad_output, weight, scale, zero_point);
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, "qlgrad: weight must be an int8 tensor, got ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.numel() > 0,
                    "qlgrad: weight must be a non-empty 2-D [out_features, in_features] tensor, got shape ",
                    weight.sizes());
  check_grad_output(grad_output, weight.size(0));
  const int64_t out_features = weight.size(0);
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), "qlgrad: scale must be a floating-point tensor, got ",
                   scale.scalar_type());
  TORCH_CHECK_VALUE(scale.dim() <= 1 && (scale.numel() == 1 || scale.numel() == out_features),
                    "qlgrad: scale must hold 1 element (per tensor) or out_features = ", out_features,
                    " elements (per channel), got shape ", scale.sizes());
  if (zero_point) {
    TORCH_CHECK_TYPE(at::isIntegralType(zero_point->scalar_type(), /*includeBool=*/false),
                     "qlgrad: zero_point must be an integer tensor, got ", zero_point->scalar_type());
    TORCH_CHECK_VALUE(zero_point->sizes() == scale.sizes(), "qlgrad: zero_point must have scale's shape ",
                      scale.sizes(), ", got ", zero_point->sizes());
  }
  TORCH_CHECK_VALUE(at::isfinite(scale).all().item<bool>() && (scale > 0).all().item<bool>(),
                    "qlgrad: scale must be finite and positive, got ", scale);
  if (zero_point && zero_point->numel() > 0) {
    TORCH_CHECK_VALUE(zero_point->min().item<int64_t>() >= -128 && zero_point->max().item<int64_t>() <= 127,
                      "qlgrad: zero_point must lie in the int8 range [-128, 127], got ", *zero_point);
  }
}

} // namespace qlgrad::detail
