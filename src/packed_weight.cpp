#include "packed_weight.h"

#include <ATen/ATen.h>

namespace qlgrad::detail {
namespace {

const char* op_family(WeightKind kind) {
  return kind == WeightKind::kQInt8 ? "quantized::linear_dynamic" : "quantized::linear_dynamic_fp16";
}

math::Int8Weight as_int8(const at::Tensor& weight) {
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
      return {weight.int_repr(), weight.q_per_channel_scales(), weight.q_per_channel_zero_points()};
    default:
      TORCH_CHECK(false, "qlgrad: unsupported weight quantization scheme ",
                  c10::toString(weight.qscheme()),
                  "; supported: per_tensor_affine, per_tensor_symmetric, per_channel_affine, "
                  "per_channel_symmetric (axis 0)");
  }
}

const char* kind_name(WeightKind kind) {
  return kind == WeightKind::kQInt8 ? "qint8" : "fp16";
}

CachedWeight derive(LinearPackedParamsBase& packed, Precision precision) {
  // fp16-packed params unpack to a float32 weight, int8-packed ones to a qint8 tensor.
  const at::Tensor weight = std::get<0>(packed.unpack());
  if (weight.is_quantized()) {
    return {WeightKind::kQInt8, math::prepare(as_int8(weight), precision)};
  }
  return {WeightKind::kFloat16, math::prepare_float(weight, precision)};
}

} // namespace

math::PreparedWeight prepared_weight(const PackedParams& packed, std::optional<WeightKind> kind,
                                     Precision precision) {
  TORCH_CHECK_VALUE(packed, "qlgrad: packed must be a LinearPackedParamsBase object, got None");
  auto cached = cached_weight(packed, precision, [&] { return derive(*packed, precision); });
  TORCH_CHECK_TYPE(!kind || *kind == cached.kind, "qlgrad: ", op_family(*kind), " expects ", kind_name(*kind),
                   " packed weights, got ", kind_name(cached.kind), " ones (packed for ", op_family(cached.kind),
                   ")");
  return std::move(cached.weight);
}

} // namespace qlgrad::detail
