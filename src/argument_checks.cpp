#include "argument_checks.h"

#include <ATen/ATen.h>

#include <cmath>

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

void check_stored_weight_tensors(const at::Tensor& grad_output, const at::Tensor& values, const at::Tensor& description,
                                 const at::Tensor& scale, const at::Tensor& zero_point) {
  check_packed_tensors(grad_output);
  for (const auto& [tensor, name] :
       {std::pair{values, "values"}, {description, "description"}, {scale, "scale"}, {zero_point, "zero_point"}}) {
    check_plain_tensor(tensor, name);
    check_device(tensor, name, at::kCPU, "the device of packed weights");
  }
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
  const int64_t in_features = weight.size(1);
  TORCH_CHECK_VALUE((scale.dim() <= 1 && (scale.numel() == 1 || scale.numel() == out_features)) ||
                        (scale.dim() == 2 && scale.size(0) == out_features && scale.size(1) > 0),
                    "qlgrad: scale must hold 1 element (per tensor), out_features = ", out_features,
                    " elements (per channel) or be [out_features, groups] = [", out_features,
                    ", G] (group-wise), got shape ", scale.sizes());
  if (scale.dim() == 2) {
    TORCH_CHECK_VALUE(in_features % scale.size(1) == 0, "qlgrad: group-wise scale of shape ", scale.sizes(),
                      " needs in_features (", in_features, ") to be a multiple of its ", scale.size(1),
                      " groups, each of in_features / groups input features");
  }
  if (zero_point) {
    TORCH_CHECK_TYPE(at::isIntegralType(zero_point->scalar_type(), /*includeBool=*/false),
                     "qlgrad: zero_point must be an integer tensor, got ", zero_point->scalar_type());
    TORCH_CHECK_VALUE(zero_point->sizes() == scale.sizes(), "qlgrad: zero_point must have scale's shape ",
                      scale.sizes(), ", got ", zero_point->sizes());
  }
  // One pass over each parameter, on every backward (group-wise ones hold a value per group):
  // a NaN anywhere makes both extremes NaN, which fails the first comparison.
  // The error names the extremes, not every value (a group-wise scale holds thousands).
  const auto [scale_min, scale_max] = at::aminmax(scale);
  const double smallest_scale = scale_min.item<double>(), largest_scale = scale_max.item<double>();
  TORCH_CHECK_VALUE(smallest_scale > 0 && std::isfinite(largest_scale),
                    "qlgrad: scale must be finite and positive, got values from ", smallest_scale, " to ",
                    largest_scale);
  // int8 zero points (torchao's) lie in the range by their dtype: no pass over them.
  if (zero_point && zero_point->numel() > 0 && zero_point->scalar_type() != at::kChar) {
    const auto [zero_point_min, zero_point_max] = at::aminmax(*zero_point);
    const int64_t smallest_zero_point = zero_point_min.item<int64_t>(),
                  largest_zero_point = zero_point_max.item<int64_t>();
    TORCH_CHECK_VALUE(smallest_zero_point >= -128 && largest_zero_point <= 127,
                      "qlgrad: zero_point must lie in the int8 range [-128, 127], got values from ",
                      smallest_zero_point, " to ", largest_zero_point);
  }
}

void check_int4pack_tensors(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                            const at::Tensor& scale_and_zeros) {
  check_plain_tensor(weight_int4pack, "weight_int4pack");
  check_plain_tensor(grad_output, "grad_output");
  check_plain_tensor(scale_and_zeros, "scale_and_zeros");
  check_device(weight_int4pack, "weight_int4pack", at::kCPU, "the CPU (the int4 packing is the CPU's)");
  check_device(grad_output, "grad_output", weight_int4pack.device(), "the weight's device");
  check_device(scale_and_zeros, "scale_and_zeros", weight_int4pack.device(), "the weight's device");
}

void check_int4pack_arguments(const at::Tensor& grad_output, const at::Tensor& weight_int4pack, int64_t group_size,
                              const at::Tensor& scale_and_zeros) {
  check_int4pack_tensors(grad_output, weight_int4pack, scale_and_zeros);
  TORCH_CHECK_TYPE(weight_int4pack.scalar_type() == at::kByte,
                   "qlgrad: weight_int4pack must be a uint8 tensor (aten::_convert_weight_to_int4pack_for_cpu's "
                   "output), got ",
                   weight_int4pack.scalar_type());
  TORCH_CHECK_VALUE(group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256,
                    "qlgrad: group_size must be 32, 64, 128 or 256, got ", group_size);
  TORCH_CHECK_TYPE(at::isFloatingType(scale_and_zeros.scalar_type()),
                   "qlgrad: scale_and_zeros must be a floating-point tensor, got ", scale_and_zeros.scalar_type());
  TORCH_CHECK_VALUE(scale_and_zeros.dim() == 3 && scale_and_zeros.size(2) == 2 && scale_and_zeros.size(0) > 0 &&
                        scale_and_zeros.size(1) > 0 && scale_and_zeros.size(1) % 16 == 0,
                    "qlgrad: scale_and_zeros must be [in_features / group_size, out_features, 2] with out_features a "
                    "multiple of 16, got shape ",
                    scale_and_zeros.sizes());
  const int64_t out_features = scale_and_zeros.size(1), in_features = scale_and_zeros.size(0) * group_size;
  TORCH_CHECK_VALUE(weight_int4pack.dim() == 2 && weight_int4pack.size(0) == out_features &&
                        weight_int4pack.size(1) == in_features / 2 && weight_int4pack.is_contiguous(),
                    "qlgrad: weight_int4pack must be contiguous of shape [out_features, in_features / 2] = [",
                    out_features, ", ", in_features / 2, "] for scale_and_zeros of shape ", scale_and_zeros.sizes(),
                    " and group_size ", group_size, ", got shape ", weight_int4pack.sizes());
  check_grad_output(grad_output, out_features);
}

} // namespace qlgrad::detail
