#include "packed_weight.h"

#include "fbgemm_weight.h"

#include <ATen/ATen.h>

namespace qlgrad::detail {
namespace {

// The codes are only ever read: the unpacked tensor's storage is viewed as int8 in place
// rather than copied by int_repr().
at::Tensor codes_of(const at::Tensor& weight) {
  return at::empty({0}, at::TensorOptions().dtype(at::kChar))
      .set_(weight.storage(), weight.storage_offset(), weight.sizes(), weight.strides());
}

// Zero points that are all zero (symmetric weights) are left out of the cached entry: they
// would only cost bytes and a pass of subtractions.
std::optional<at::Tensor> unless_zero(const at::Tensor& zero_point) {
  return zero_point.ne(0).any().item<bool>() ? std::optional(zero_point) : std::nullopt;
}

math::StoredWeight as_int8(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kQInt8,
                   "qlgrad: quantized::linear_dynamic expects qint8 packed weights, got ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2, "qlgrad: expected a 2-D packed weight, got ", weight.dim(), " dims");
  switch (weight.qscheme()) {
    case at::kPerTensorAffine:
    case at::kPerTensorSymmetric:
      return math::stored_int8_weight(codes_of(weight), at::full({1}, weight.q_scale(), at::kDouble),
                                      unless_zero(at::full({1}, weight.q_zero_point(), at::kLong)));
    case at::kPerChannelAffine:
    case at::kPerChannelSymmetric:
      TORCH_CHECK(weight.q_per_channel_axis() == 0,
                  "qlgrad: per-channel weights must be quantized along the output axis 0, got axis ",
                  weight.q_per_channel_axis());
      return math::stored_int8_weight(codes_of(weight), weight.q_per_channel_scales(),
                                      unless_zero(weight.q_per_channel_zero_points()));
    default:
      TORCH_CHECK(false, "qlgrad: unsupported weight quantization scheme ", c10::toString(weight.qscheme()),
                  "; supported: per_tensor_affine, per_tensor_symmetric, per_channel_affine, "
                  "per_channel_symmetric (axis 0)");
  }
}

math::StoredWeight unpack(LinearPackedParamsBase& packed) {
  // fp16-packed params unpack to a float32 weight, int8-packed ones to a qint8 tensor.
  const at::Tensor weight = std::get<0>(packed.unpack());
  return weight.is_quantized() ? as_int8(weight) : math::stored_float16_weight(weight);
}

// A stored weight is a constant made of plain real tensors, also where its caller traces under a
// fake-tensor mode (torch.compile calls __obj_flatten__ so) or runs inside a torch.func transform.
c10::DispatchKeySet outside_modes_and_transforms() {
  return c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                              c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                              c10::DispatchKey::FuncTorchDynamicLayerBackMode});
}

} // namespace

WeightKind kind_of(const math::StoredWeight& weight) {
  return weight.is_int8() ? WeightKind::kQInt8 : WeightKind::kFloat16;
}

math::StoredWeight uncached_weight(const PackedParams& packed) {
  c10::impl::ExcludeDispatchKeyGuard plain_tensors(outside_modes_and_transforms());
  auto in_place = fbgemm_weight(packed);
  return in_place ? *std::move(in_place) : unpack(*packed);
}

math::StoredWeight weight_of_packed(const PackedParams& packed, std::optional<WeightKind> kind) {
  TORCH_CHECK_VALUE(packed, "qlgrad: packed must be a LinearPackedParamsBase object, got None");
  c10::impl::ExcludeDispatchKeyGuard plain_tensors(outside_modes_and_transforms());
  // fbgemm's packing is read where it lies; other engines' weights are unpacked once and cached.
  auto in_place = fbgemm_weight(packed);
  auto weight = in_place ? *std::move(in_place) : cached_weight(packed, [&] { return unpack(*packed); });
  const WeightKind found = kind_of(weight);
  TORCH_CHECK_TYPE(!kind || *kind == found, "qlgrad: ", op_family(*kind), " expects ", kind_name(*kind),
                   " packed weights, got ", kind_name(found), " ones (packed for ", op_family(found), ")");
  return weight;
}

} // namespace qlgrad::detail
