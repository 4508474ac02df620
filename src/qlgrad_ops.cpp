// qlgrad's own operators, the TorchScript door: their schemas, CPU kernels and Autograd
// kernels. Registration is at the bottom.
//   linear_dynamic_backward       grad_output @ W_deq for qint8 packed params
//   linear_dynamic_fp16_backward  grad_output @ W for fp16 packed params
//   linear_int8_backward          grad_output @ (scale * (weight - zero_point)) on plain tensors
//   linear_int4pack_backward      grad_output @ W for torch's CPU int4 packing
//                                 (aten::_weight_int4pack_mm_for_cpu's weight)
//   cache_weight                  unpacks a packed weight into the weight cache ahead of backward
//   _int4pack_linear              the training forward of torch's CPU int4 linear
//                                 (internal, implemented in int4pack_autograd.cpp)
//   _int8_linear                  the integer product of torchao's int8 layers' training
//                                 forward (internal)
//   _int8_linear_rescaled         the same, rescaled as torchao rescales it
//   _int8_quantize_rows           the activation quantization of that forward (internal)
//   _int8_quant_dequant_rows      that of torchao's group-wise int8 layers' (internal)
//   _int8_dynamic_groupwise_linear
//                                 the training forward of torchao's group-wise int8 layers less
//                                 the bias: the activation quantized as torchao quantizes it,
//                                 in integer products where the CPU has them (internal)
//   _int8_groupwise_linear        its floating point product, of the dequantized activation,
//                                 where integers cannot take it (internal; the tests' door to
//                                 it on every CPU)
//   _int8_groupwise_dequantize    those layers' weight as torchao dequantizes it (internal)
//   _linear_dynamic_with_weight, _stored_weight_backward
//                                 torch.compile's door to the packed backward (internal,
//                                 implemented in traced_ops.cpp)

#include "qlgrad_ops.h"

#include "activation_quantization.h"
#include "argument_checks.h"
#include "backward_math.h"
#include "matmul.h"
#include "operator_handle.h"
#include "packed_weight.h"
#include "register_once.h"

#include <qlgrad/qlgrad.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>

namespace qlgrad::detail {

using PackedBackwardFn = at::Tensor(const at::Tensor&, const PackedParams&, PrecisionName);
using LinearInt8BackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&, PrecisionName);
using LinearInt4packBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                                            PrecisionName);
using CacheWeightFn = void(const PackedParams&);

at::Tensor call_packed_backward(WeightKind kind, const at::Tensor& grad_output, const PackedParams& packed,
                                PrecisionName precision) {
  static const auto int8 = operator_handle<PackedBackwardFn>("qlgrad::linear_dynamic_backward");
  static const auto fp16 = operator_handle<PackedBackwardFn>("qlgrad::linear_dynamic_fp16_backward");
  return (kind == WeightKind::kQInt8 ? int8 : fp16).call(grad_output, packed, precision);
}

at::Tensor call_linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& zero_point, PrecisionName precision) {
  static const auto op = operator_handle<LinearInt8BackwardFn>("qlgrad::linear_int8_backward");
  return op.call(grad_output, weight, scale, zero_point, precision);
}

at::Tensor call_linear_int4pack_backward(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                         int64_t group_size, const at::Tensor& scale_and_zeros,
                                         PrecisionName precision) {
  static const auto op = operator_handle<LinearInt4packBackwardFn>("qlgrad::linear_int4pack_backward");
  return op.call(grad_output, weight_int4pack, group_size, scale_and_zeros, precision);
}

void call_cache_weight(const PackedParams& packed) {
  static const auto op = operator_handle<CacheWeightFn>("qlgrad::cache_weight");
  op.call(packed);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The precision a backward of grad_output runs in: the one named, else the choice in effect on
// this thread, else grad_output's dtype's.
Precision resolve(PrecisionName name, const at::Tensor& grad_output) {
  return effective_backward_precision(name ? std::optional(parse_precision(*name)) : chosen_backward_precision(),
                                      grad_output.scalar_type());
}

// ---- linear_int8_backward -------------------------------------------------------

at::Tensor linear_int8_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& zero_point, PrecisionName precision) {
  check_int8_arguments(grad_output, weight, scale, zero_point);
  return math::input_gradient(grad_output, math::stored_int8_weight(weight, scale, zero_point),
                              resolve(precision, grad_output));
}

// The map grad_output -> grad_output @ W_deq is linear, so its derivative is the
// adjoint with the same weight (exact, in the gradient's dtype, whatever precision the
// first order used), and every higher order follows through ATen.
struct LinearInt8BackwardFunction : torch::autograd::Function<LinearInt8BackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& weight,
                            const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                            PrecisionName precision) {
    ctx->save_for_backward({weight, scale, zero_point.value_or(at::Tensor())});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_linear_int8_backward(grad_output, weight, scale, zero_point, precision);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> zero_point =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    // The tensors as given: the adjoint dequantizes them in the gradient's dtype as they are.
    const math::StoredWeight weight{saved[0], saved[1], zero_point};
    return {math::input_gradient_adjoint(grads[0], weight), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// An ordinary backward (no create_graph) calls these operators with grad mode off: no node
// is made then, which would only be thrown away.
at::Tensor linear_int8_backward_autograd(const at::Tensor& grad_output, const at::Tensor& weight,
                                         const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                                         PrecisionName precision) {
  check_int8_tensors(grad_output, weight, scale, zero_point);
  if (!torch::autograd::compute_requires_grad(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_linear_int8_backward(grad_output, weight, scale, zero_point, precision);
  }
  return LinearInt8BackwardFunction::apply(grad_output, weight, scale, zero_point, precision);
}

// ---- linear_int4pack_backward ---------------------------------------------------

at::Tensor linear_int4pack_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                        int64_t group_size, const at::Tensor& scale_and_zeros,
                                        PrecisionName precision) {
  check_int4pack_arguments(grad_output, weight_int4pack, group_size, scale_and_zeros);
  return math::input_gradient(grad_output, math::int4_packed_weight(weight_int4pack, group_size, scale_and_zeros),
                              resolve(precision, grad_output));
}

// Linear in grad_output, as linear_int8_backward: the derivative is the adjoint, which is the
// op's own product with the packed weight.
struct LinearInt4packBackwardFunction : torch::autograd::Function<LinearInt4packBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                            int64_t group_size, const at::Tensor& scale_and_zeros, PrecisionName precision) {
    ctx->save_for_backward({weight_int4pack, scale_and_zeros});
    ctx->saved_data["group_size"] = group_size;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_linear_int4pack_backward(grad_output, weight_int4pack, group_size, scale_and_zeros, precision);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto weight = math::int4_packed_weight(saved[0], ctx->saved_data["group_size"].toInt(), saved[1]);
    return {math::input_gradient_adjoint(grads[0], weight), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_int4pack_backward_autograd(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                             int64_t group_size, const at::Tensor& scale_and_zeros,
                                             PrecisionName precision) {
  check_int4pack_tensors(grad_output, weight_int4pack, scale_and_zeros);
  if (!torch::autograd::compute_requires_grad(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_linear_int4pack_backward(grad_output, weight_int4pack, group_size, scale_and_zeros, precision);
  }
  return LinearInt4packBackwardFunction::apply(grad_output, weight_int4pack, group_size, scale_and_zeros, precision);
}

// ---- linear_dynamic_backward, linear_dynamic_fp16_backward -----------------------

template <WeightKind kind>
at::Tensor packed_backward_cpu(const at::Tensor& grad_output, const PackedParams& packed, PrecisionName precision) {
  check_packed_tensors(grad_output);
  const auto weight = weight_of_packed(packed, kind);
  check_grad_output(grad_output, weight.out_features());
  return math::input_gradient(grad_output, weight, resolve(precision, grad_output));
}

template <WeightKind kind>
struct PackedBackwardFunction : torch::autograd::Function<PackedBackwardFunction<kind>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const PackedParams& packed,
                            PrecisionName precision) {
    ctx->saved_data["packed"] = packed;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_packed_backward(kind, grad_output, packed, precision);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto packed = ctx->saved_data["packed"].toCustomClass<LinearPackedParamsBase>();
    return {math::input_gradient_adjoint(grads[0], weight_of_packed(packed, kind)), at::Tensor(), at::Tensor()};
  }
};

template <WeightKind kind>
at::Tensor packed_backward_autograd(const at::Tensor& grad_output, const PackedParams& packed,
                                    PrecisionName precision) {
  check_packed_tensors(grad_output);
  if (!torch::autograd::compute_requires_grad(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_packed_backward(kind, grad_output, packed, precision);
  }
  return PackedBackwardFunction<kind>::apply(grad_output, packed, precision);
}

// ---- _int8_linear, _int8_linear_rescaled ------------------------------------------

void check_int8_operands(const at::Tensor& input, const at::Tensor& weight) {
  for (const auto& [tensor, name] : {std::pair{&input, "input"}, std::pair{&weight, "weight"}}) {
    TORCH_CHECK_TYPE(tensor->scalar_type() == at::kChar, "qlgrad: ", name, " must be an int8 tensor, got ",
                     tensor->scalar_type());
    TORCH_CHECK_VALUE(tensor->dim() == 2, "qlgrad: ", name, " must be 2-D, got shape ", tensor->sizes());
  }
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "qlgrad: input [M, K] and weight [N, K] must share K, got ",
                    input.sizes(), " and ", weight.sizes());
}

at::Tensor int8_linear_cpu(const at::Tensor& input, const at::Tensor& weight) {
  check_int8_operands(input, weight);
  return math::int8_linear(input.contiguous(), weight.contiguous());
}

at::Tensor int8_linear_rescaled_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& row_scale,
                                    const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                                    at::ScalarType dtype) {
  check_int8_operands(input, weight);
  const auto float_or_bfloat16 = [](at::ScalarType type) { return type == at::kFloat || type == at::kBFloat16; };
  TORCH_CHECK_TYPE(float_or_bfloat16(dtype), "qlgrad: dtype must be float32 or bfloat16, got ", dtype);
  const auto check_type = [&](const at::Tensor& tensor, const char* name) {
    TORCH_CHECK_TYPE(float_or_bfloat16(tensor.scalar_type()), "qlgrad: ", name,
                     " must be a float32 or bfloat16 tensor, got ", tensor.scalar_type());
  };
  // The scales as torchao keeps them ([M, 1] and [N, 1], or [1, 1] for a tensor's), as vectors
  // [length], one value standing for all.
  const auto scale_vector = [&](const at::Tensor& scale, const char* name, int64_t length) {
    check_type(scale, name);
    TORCH_CHECK_VALUE(scale.dim() <= 2 && (scale.numel() == length || scale.numel() == 1), "qlgrad: ", name,
                      " must hold ", length, " values or one (at most 2-D), got shape ", scale.sizes());
    return scale.reshape({-1}).expand({length});
  };
  const auto rows = scale_vector(row_scale, "row_scale", input.size(0));
  const auto columns = scale_vector(weight_scale, "weight_scale", weight.size(0));
  if (bias) {
    check_type(*bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "qlgrad: bias must be [", weight.size(0),
                      "], got shape ", bias->sizes());
  }
  return math::int8_linear_rescaled(input.contiguous(), weight.contiguous(), rows, columns, bias, dtype);
}

void check_activation(const at::Tensor& input) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
                   "qlgrad: input must be a float32 or bfloat16 tensor, got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.dim() == 2, "qlgrad: input must be 2-D, got shape ", input.sizes());
}

std::tuple<at::Tensor, at::Tensor> int8_quantize_rows_cpu(const at::Tensor& input) {
  check_activation(input);
  auto [codes, scale] = math::int8_quantize_rows_symmetric(input.contiguous());
  return {codes, scale};
}

at::Tensor int8_quant_dequant_rows_cpu(const at::Tensor& input) {
  check_activation(input);
  return math::int8_quant_dequant_rows_asymmetric(input.contiguous());
}

// ---- _int8_groupwise_linear -----------------------------------------------------

// The arguments of _int8_groupwise_linear and _int8_dynamic_groupwise_linear.
void check_groupwise_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scale,
                            const at::Tensor& zero_point) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
                   "qlgrad: input must be a float32 or bfloat16 tensor, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, "qlgrad: weight must be an int8 tensor, got ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(input.dim() == 2 && weight.dim() == 2 && input.size(1) == weight.size(1),
                    "qlgrad: input [M, K] and weight [N, K] must share K, got ", input.sizes(), " and ",
                    weight.sizes());
  TORCH_CHECK_VALUE(
      scale.dim() == 2 && scale.size(0) == weight.size(0) && scale.size(1) > 0 && weight.size(1) % scale.size(1) == 0 &&
          (scale.size(1) == 1 || weight.size(1) / scale.size(1) % 16 == 0) && zero_point.sizes() == scale.sizes(),
      "qlgrad: scale and zero_point must be [N, G] with K / G a multiple of 16 (or G = 1), got ", scale.sizes(),
      " and ", zero_point.sizes(), " for weight ", weight.sizes());
}

at::Tensor int8_groupwise_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scale,
                                     const at::Tensor& zero_point) {
  check_groupwise_linear(input, weight, scale, zero_point);
  const auto kernel_zero_point =
      math::all_zero(zero_point) ? std::nullopt : std::optional(zero_point.to(at::kFloat).contiguous());
  return math::int8_groupwise_linear(input.contiguous(), weight.contiguous(), scale.to(at::kFloat).contiguous(),
                                     kernel_zero_point);
}

at::Tensor int8_dynamic_groupwise_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scale,
                                             const at::Tensor& zero_point) {
  check_groupwise_linear(input, weight, scale, zero_point);
  return math::int8_dynamic_groupwise_linear(input.contiguous(), weight.contiguous(), scale, zero_point.contiguous());
}

// ---- _int8_groupwise_dequantize -------------------------------------------------

at::Tensor int8_groupwise_dequantize_cpu(const at::Tensor& weight, const at::Tensor& scale,
                                         const std::optional<at::Tensor>& zero_point, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, "qlgrad: weight must be an int8 tensor, got ",
                   weight.scalar_type());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16, "qlgrad: dtype must be float32 or bfloat16, got ",
                   dtype);
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), "qlgrad: scale must be a floating tensor, got ",
                   scale.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && scale.dim() == 2 && scale.size(0) == weight.size(0) && scale.size(1) > 0 &&
                        weight.size(1) % scale.size(1) == 0 && (!zero_point || zero_point->sizes() == scale.sizes()),
                    "qlgrad: scale and zero_point must be [N, G] with G dividing K for weight [N, K], got ",
                    scale.sizes(), zero_point ? " and " : "", zero_point ? zero_point->sizes() : at::IntArrayRef(),
                    " for weight ", weight.sizes());
  return math::int8_groupwise_dequantize(
      weight.contiguous(), scale.to(at::kFloat).contiguous(),
      zero_point ? std::optional(zero_point->to(at::kFloat).contiguous()) : std::nullopt, dtype);
}

// ---- cache_weight -----------------------------------------------------------------

void cache_weight_kernel(const PackedParams& packed) {
  weight_of_packed(packed, std::nullopt);
}

} // namespace
} // namespace qlgrad::detail

QLGRAD_LIBRARY_ONCE(qlgrad, m) {
  m.def(
      "linear_dynamic_backward(Tensor grad_output, "
      "__torch__.torch.classes.quantized.LinearPackedParamsBase packed, str? precision=None) -> Tensor");
  m.def(
      "linear_dynamic_fp16_backward(Tensor grad_output, "
      "__torch__.torch.classes.quantized.LinearPackedParamsBase packed, str? precision=None) -> Tensor");
  m.def(
      "linear_int8_backward(Tensor grad_output, Tensor weight, Tensor scale, "
      "Tensor? zero_point=None, str? precision=None) -> Tensor");
  m.def(
      "linear_int4pack_backward(Tensor grad_output, Tensor weight_int4pack, int group_size, "
      "Tensor scale_and_zeros, str? precision=None) -> Tensor");
  // No tensor argument to dispatch on: a catch-all kernel.
  m.def("cache_weight(__torch__.torch.classes.quantized.LinearPackedParamsBase packed) -> ()",
        &qlgrad::detail::cache_weight_kernel);
  // The forward of aten::_weight_int4pack_mm_for_cpu where the input requires grad, from the
  // packing when that is the faster (src/int4pack_autograd.cpp; internal).
  m.def("_int4pack_linear(Tensor input, Tensor weight_int4pack, int group_size, Tensor scale_and_zeros) -> Tensor");
  // int8 input @ int8 weight.T in int32, exactly as torch._int_mm: the integer product of the
  // training forward of torchao's int8 layers (python/qlgrad/_torchao.py; internal).
  m.def("_int8_linear(Tensor input, Tensor weight) -> Tensor");
  // The same rescaled as torchao rescales it, one operation at a time (internal):
  // (((sums.to(row_scale.dtype) * row_scale[:, None]).to(dtype) * weight_scale) + bias).to(dtype),
  // the scales [M] and [N], or [M, 1] and [N, 1], or one value each.
  m.def(
      "_int8_linear_rescaled(Tensor input, Tensor weight, Tensor row_scale, Tensor weight_scale, Tensor? bias, "
      "ScalarType dtype) -> Tensor");
  // torchao's symmetric int8 quantization of an activation per row, one operation at a time as
  // torch rounds it on x86 CPUs (internal): the codes and float32 scales [M, 1].
  m.def("_int8_quantize_rows(Tensor input) -> (Tensor codes, Tensor scale)");
  // torchao's asymmetric int8 quantization of an activation per row, dequantized, one operation
  // at a time as torch rounds it on x86 CPUs (internal): the activation torchao's group-wise
  // int8 layers multiply.
  m.def("_int8_quant_dequant_rows(Tensor input) -> Tensor");
  // input @ (scale * (weight - zero_point)).T from int8 codes with group-wise parameters: the
  // product of the training forward of torchao's group-wise int8 layers (internal).
  m.def("_int8_groupwise_linear(Tensor input, Tensor weight, Tensor scale, Tensor zero_point) -> Tensor");
  // That weight as torchao dequantizes it, (weight - zero_point) * scale in `dtype`, in one pass:
  // the forward of those layers without grad, torchao's bit for bit (internal).
  m.def("_int8_dynamic_groupwise_linear(Tensor input, Tensor weight, Tensor scale, Tensor zero_point) -> Tensor");
  m.def("_int8_groupwise_dequantize(Tensor weight, Tensor scale, Tensor? zero_point, ScalarType dtype) -> Tensor");
  // torch.compile's door to the backward of the dynamic linear family (src/traced_ops.cpp).
  m.def(
      "_linear_dynamic_with_weight(Tensor input, __torch__.torch.classes.quantized.LinearPackedParamsBase packed, "
      "bool relu, bool reduce_range) -> (Tensor output, Tensor values, Tensor description, Tensor scale, "
      "Tensor zero_point)");
  m.def(
      "_stored_weight_backward(Tensor grad_output, Tensor values, Tensor description, Tensor scale, "
      "Tensor zero_point, SymInt in_features) -> Tensor");
}

QLGRAD_LIBRARY_IMPL_ONCE(qlgrad, CPU, m) {
  using qlgrad::detail::WeightKind;
  m.impl("linear_dynamic_backward", &qlgrad::detail::packed_backward_cpu<WeightKind::kQInt8>);
  m.impl("linear_dynamic_fp16_backward", &qlgrad::detail::packed_backward_cpu<WeightKind::kFloat16>);
  m.impl("linear_int8_backward", &qlgrad::detail::linear_int8_backward_cpu);
  m.impl("linear_int4pack_backward", &qlgrad::detail::linear_int4pack_backward_cpu);
  m.impl("_int8_linear", &qlgrad::detail::int8_linear_cpu);
  m.impl("_int8_linear_rescaled", &qlgrad::detail::int8_linear_rescaled_cpu);
  m.impl("_int8_quantize_rows", &qlgrad::detail::int8_quantize_rows_cpu);
  m.impl("_int8_quant_dequant_rows", &qlgrad::detail::int8_quant_dequant_rows_cpu);
  m.impl("_int8_groupwise_linear", &qlgrad::detail::int8_groupwise_linear_cpu);
  m.impl("_int8_dynamic_groupwise_linear", &qlgrad::detail::int8_dynamic_groupwise_linear_cpu);
  m.impl("_int8_groupwise_dequantize", &qlgrad::detail::int8_groupwise_dequantize_cpu);
}

QLGRAD_LIBRARY_IMPL_ONCE(qlgrad, Autograd, m) {
  using qlgrad::detail::WeightKind;
  m.impl("linear_dynamic_backward", &qlgrad::detail::packed_backward_autograd<WeightKind::kQInt8>);
  m.impl("linear_dynamic_fp16_backward", &qlgrad::detail::packed_backward_autograd<WeightKind::kFloat16>);
  m.impl("linear_int8_backward", &qlgrad::detail::linear_int8_backward_autograd);
  m.impl("linear_int4pack_backward", &qlgrad::detail::linear_int4pack_backward_autograd);
}
