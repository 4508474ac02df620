#include "packed_weight.h"

#include <ATen/ATen.h>

namespace qlgrad::detail {

math::Int8Weight unpack_int8(LinearPackedParamsBase& packed) {
  const at::Tensor weight = std::get<0>(packed.unpack());
  TORCH_CHECK_TYPE(weight.is_quantized(),
                   "qlgrad: quantized::linear_dynamic expects qint8 packed weights, got ",
                   weight.scalar_type(),
                   " weights (packed for quantized::linear_dynamic_fp16?)");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kQInt8,
                   "qlgrad: quantized::linear_dynamic expects qint8 packed weights, got ",
                   weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2, "qlgrad: expected a 2-D packed weight, got ", weight.dim(), " dims");

  switch (weight.qscheme()) {
    case at::kPerTensorAffine:
    case at::kPerTensorSymmetric:
      return {weight.int_repr(), at::full({1}, weight.q_scale(), at::kDouble),
              at::full({1}, weight.q_zero_point(), at::kLong)};
    case at::kPerChannelAffine:
    case at::kPerChannelSymmetric:
      TORCH_CHECK(weight.q_per_channel_axis() == 0,
                  "qlgrad: per-channel weights must be quantized along the output axis 0, got axis ",
                  weight.q_per_channel_axis());
      return {weight.int_repr(), weight.q_per_channel_scales(),
              weight.q_per_channel_zero_points()};
    default:
      TORCH_CHECK(false, "qlgrad: unsupported weight quantization scheme ",
                  c10::toString(weight.qscheme()),
                  "; supported: per_tensor_affine, per_tensor_symmetric, per_channel_affine, "
                  "per_channel_symmetric (axis 0)");
  }
}

math::PreparedWeight prepared_weight(const PackedParams& packed, Precision precision) {
  return cached_weight(packed, precision, [&] { return math::prepare(unpack_int8(*packed), precision); });
}

} // namespace qlgrad::detail
