// torch.compile's door to the backward of the dynamic linear family, for
// python/qlgrad/_compile.py. A compiled graph cannot save packed params (a TorchBind object)
// for its backward: AOTAutograd's runtime refuses them. So the traced forward runs the stock op
// through _linear_dynamic_with_weight, which also returns the stored weight as plain tensors
// (the weight the packed backward reads, nothing copied), and the backward takes those.
// Internal: the tensors' form may change with qlgrad's.
//   values       int8 codes or float16 values, flat: [N * K] in rows, or fbgemm's blocked packing
//   description  int64 [precision, N, K], or [precision, N, K, block_depth, block_width, interleave]
//                for the packing: the backward precision chosen at forward time (its Precision
//                value, or kNoPrecisionChosen for none, when the gradient's dtype decides in the
//                backward; read when the compiled forward runs, not when it was traced), the
//                shape and the layout
//   scale        float32 [1] or [N]
//   zero_point   float32 like scale, or empty for zero
// One op for the forward and the weight: an op whose outputs only the backward uses would be
// placed in the backward by the partitioner, which would then save the packed params for it.

#include "argument_checks.h"
#include "backward_math.h"
#include "dynamic_linear_ops.h"
#include "packed_weight.h"
#include "register_once.h"

#include <qlgrad/qlgrad.h>

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace qlgrad::detail {
namespace {

using WeightTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// description[0] where no precision was chosen: no Precision value.
constexpr int64_t kNoPrecisionChosen = -1;

WeightTensors weight_tensors(const math::StoredWeight& weight) {
  const auto chosen = chosen_backward_precision();
  std::vector<int64_t> description = {chosen ? static_cast<int64_t>(*chosen) : kNoPrecisionChosen,
                                      weight.out_features(), weight.in_features()};
  if (weight.blocked) {
    description.insert(description.end(),
                       {weight.blocked->block_depth, weight.blocked->block_width, weight.blocked->interleave});
  }
  return {weight.values.view({-1}), at::tensor(description, at::kLong), weight.scale,
          weight.zero_point.value_or(at::empty({0}, weight.scale.options()))};
}

// The stock forward of the op that `kind` and `relu` name, below autograd.
at::Tensor stock_forward(const at::Tensor& input, const PackedParams& packed, WeightKind kind, bool relu,
                         bool reduce_range) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return kind == WeightKind::kQInt8 ? int8_op(relu).call(input, packed, reduce_range)
                                    : fp16_op(relu).call(input, packed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_dynamic_with_weight(
    const at::Tensor& input, const PackedParams& packed, bool relu, bool reduce_range) {
  TORCH_CHECK_VALUE(packed, "qlgrad: packed must be a LinearPackedParamsBase object, got None");
  const auto weight = weight_of_packed(packed, std::nullopt);
  auto [values, description, scale, zero_point] = weight_tensors(weight);
  return {stock_forward(input, packed, kind_of(weight), relu, reduce_range), values, description, scale, zero_point};
}

// The precision chosen and the stored weight that weight_tensors' tensors describe, every size
// checked against the others, so that no layout reads outside `values`.
std::pair<std::optional<Precision>, math::StoredWeight> traced_weight(const at::Tensor& values,
                                                                      const at::Tensor& description,
                                                                      const at::Tensor& scale,
                                                                      const at::Tensor& zero_point,
                                                                      int64_t in_features) {
  TORCH_CHECK_VALUE(description.scalar_type() == at::kLong && description.dim() == 1 &&
                        (description.numel() == 3 || description.numel() == 6),
                    "qlgrad: description must be an int64 tensor of 3 or 6 elements, as "
                    "_linear_dynamic_with_weight returns it, got ",
                    description.scalar_type(), " of shape ", description.sizes());
  const auto fields = description.contiguous();
  const int64_t* field = fields.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(field[0] >= kNoPrecisionChosen && field[0] < static_cast<int64_t>(kPrecisions.size()),
                    "qlgrad: description[0] must be a Precision value or ", kNoPrecisionChosen, " (none chosen), got ",
                    field[0]);
  const auto precision =
      field[0] == kNoPrecisionChosen ? std::nullopt : std::optional(kPrecisions[static_cast<size_t>(field[0])]);
  const int64_t rows = field[1], columns = field[2];
  const bool blocked = description.numel() == 6;
  TORCH_CHECK_VALUE(rows > 0 && columns == in_features, "qlgrad: description's shape [", rows, ", ", columns,
                    "] does not describe a weight of in_features = ", in_features);
  TORCH_CHECK_TYPE(values.dim() == 1 && values.is_contiguous() &&
                       (values.scalar_type() == at::kChar || (values.scalar_type() == at::kHalf && !blocked)),
                   "qlgrad: values must be contiguous flat int8 codes or float16 values, as "
                   "_linear_dynamic_with_weight returns them, got ",
                   values.scalar_type(), " of shape ", values.sizes());
  TORCH_CHECK_VALUE(
      scale.scalar_type() == at::kFloat && scale.dim() == 1 && (scale.numel() == 1 || scale.numel() == rows),
      "qlgrad: scale must be float32 [1] or [", rows, "], got ", scale.scalar_type(), " of shape ", scale.sizes());
  TORCH_CHECK_VALUE(zero_point.numel() == 0 || zero_point.sizes() == scale.sizes(),
                    "qlgrad: zero_point must be empty or shaped like scale ", scale.sizes(), ", got ",
                    zero_point.sizes());
  const auto zero = zero_point.numel() == 0 ? std::nullopt : std::optional(zero_point.to(at::kFloat).contiguous());
  if (!blocked) {
    TORCH_CHECK_VALUE(values.numel() == rows * columns, "qlgrad: values must hold ", rows, " x ", columns,
                      " elements, got ", values.numel());
    return {precision, {values.view({rows, columns}), scale.contiguous(), zero}};
  }
  const math::BlockedLayout layout{rows, columns, field[3], field[4], field[5]};
  TORCH_CHECK_VALUE(layout.block_depth > 0 && layout.block_width > 0 && layout.interleave > 0 &&
                        layout.block_depth % layout.interleave == 0 && values.numel() == layout.size(),
                    "qlgrad: description ", description, " does not describe the ", values.numel(), " bytes of values");
  return {precision, math::blocked_int8_weight(values, layout, scale, zero)};
}

at::Tensor stored_weight_backward(const at::Tensor& grad_output, const at::Tensor& values,
                                  const at::Tensor& description, const at::Tensor& scale, const at::Tensor& zero_point,
                                  int64_t in_features) {
  check_stored_weight_tensors(grad_output, values, description, scale, zero_point);
  const auto [chosen, weight] = traced_weight(values, description, scale, zero_point, in_features);
  check_grad_output(grad_output, weight.out_features());
  return math::input_gradient(grad_output, weight, effective_backward_precision(chosen, grad_output.scalar_type()));
}

} // namespace
} // namespace qlgrad::detail

// Both run below autograd only: the traced graph's autograd is python/qlgrad/_compile.py's.
QLGRAD_LIBRARY_IMPL_ONCE(qlgrad, CPU, m) {
  m.impl("_linear_dynamic_with_weight", &qlgrad::detail::linear_dynamic_with_weight);
  m.impl("_stored_weight_backward", &qlgrad::detail::stored_weight_backward);
}
