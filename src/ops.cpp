// qlgrad's own operators (the TorchScript door) and the public C++ API, which calls
// them through the dispatcher so that C++ callers get autograd too.

#include "backward_math.h"
#include "packed_weight.h"
#include "registration.h"

#include <qlgrad/qlgrad.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

namespace qlgrad {
namespace {

using detail::PackedParams;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Operators take the precision by name (`str? precision=None`); None means the one in
// effect on the calling thread.
using PrecisionName = std::optional<c10::string_view>;
using PackedBackwardFn = at::Tensor(const at::Tensor&, const PackedParams&, PrecisionName);
using LinearInt8BackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&, PrecisionName);
using PrepareFn = void(const PackedParams&);

Precision resolve(PrecisionName name) {
  return name ? parse_precision(*name) : backward_precision();
}

PrecisionName name_of(std::optional<Precision> precision) {
  return precision ? PrecisionName(precision_name(*precision)) : std::nullopt;
}

// Calls through the dispatcher, used by the public API and by the Autograd kernels
// (which re-dispatch below autograd, so tracers and fake tensors see the operator).
template <typename Fn>
c10::TypedOperatorHandle<Fn> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

at::Tensor call_packed_backward(detail::WeightKind kind, const at::Tensor& grad_output,
                                const PackedParams& packed, PrecisionName precision) {
  static const auto int8 = operator_handle<PackedBackwardFn>("qlgrad::linear_dynamic_backward");
  static const auto fp16 = operator_handle<PackedBackwardFn>("qlgrad::linear_dynamic_fp16_backward");
  return (kind == detail::WeightKind::kQInt8 ? int8 : fp16).call(grad_output, packed, precision);
}

at::Tensor call_linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight,
                                     const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                                     PrecisionName precision) {
  static const auto op = operator_handle<LinearInt8BackwardFn>("qlgrad::linear_int8_backward");
  return op.call(grad_output, weight, scale, zero_point, precision);
}

// An ordinary backward (no create_graph) calls these operators with grad mode off: it
// then skips making a node, which would only be thrown away.
bool differentiating(const at::Tensor& grad_output) {
  return at::GradMode::is_enabled() && grad_output.requires_grad();
}

// What decides where the dispatcher sends a call: a tensor that is missing (None),
// quantized, sparse or on another device than the weight never reaches the value checks
// below. It fails inside autograd ("tensor does not have a device"), finds no kernel
// ("could not run ... with arguments from the 'QuantizedCPU' backend") or, on the meta
// device, reaches the shape-only fake implementation, none of which names the argument.
// The Autograd kernels check this before anything else, and the CPU kernels again for
// callers below autograd.
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

// Packed weights of the dynamic linear ops (fbgemm, qnnpack, onednn) live on the CPU.
void check_packed_tensors(const at::Tensor& grad_output) {
  check_plain_tensor(grad_output, "grad_output");
  check_device(grad_output, "grad_output", at::kCPU, "the device of packed weights");
}

void check_grad_output(const at::Tensor& grad_output, int64_t out_features) {
  TORCH_CHECK_TYPE(at::isFloatingType(grad_output.scalar_type()),
                   "qlgrad: grad_output must be a floating-point tensor, got ",
                   grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.dim() >= 1,
                    "qlgrad: grad_output must have at least 1 dimension, got a 0-dim tensor");
  TORCH_CHECK_VALUE(grad_output.size(-1) == out_features,
                    "qlgrad: grad_output's last dimension must equal the weight's out_features (",
                    out_features, "), got shape ", grad_output.sizes());
}

void check_int8_arguments(const at::Tensor& grad_output, const at::Tensor& weight,
                          const at::Tensor& scale, const std::optional<at::Tensor>& zero_point) {
  check_int8_tensors(grad_output, weight, scale, zero_point);
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar,
                   "qlgrad: weight must be an int8 tensor, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.numel() > 0,
                    "qlgrad: weight must be a non-empty 2-D [out_features, in_features] tensor, got shape ",
                    weight.sizes());
  check_grad_output(grad_output, weight.size(0));
  const int64_t out_features = weight.size(0);
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()),
                   "qlgrad: scale must be a floating-point tensor, got ", scale.scalar_type());
  TORCH_CHECK_VALUE(scale.dim() <= 1 && (scale.numel() == 1 || scale.numel() == out_features),
                    "qlgrad: scale must hold 1 element (per tensor) or out_features = ", out_features,
                    " elements (per channel), got shape ", scale.sizes());
  if (zero_point) {
    TORCH_CHECK_TYPE(at::isIntegralType(zero_point->scalar_type(), /*includeBool=*/false),
                     "qlgrad: zero_point must be an integer tensor, got ", zero_point->scalar_type());
    TORCH_CHECK_VALUE(zero_point->sizes() == scale.sizes(),
                      "qlgrad: zero_point must have scale's shape ", scale.sizes(), ", got ",
                      zero_point->sizes());
  }
  TORCH_CHECK_VALUE(at::isfinite(scale).all().item<bool>() && (scale > 0).all().item<bool>(),
                    "qlgrad: scale must be finite and positive, got ", scale);
  if (zero_point && zero_point->numel() > 0) {
    TORCH_CHECK_VALUE(zero_point->min().item<int64_t>() >= -128 && zero_point->max().item<int64_t>() <= 127,
                      "qlgrad: zero_point must lie in the int8 range [-128, 127], got ", *zero_point);
  }
}

// ---- linear_int8_backward -------------------------------------------------------

at::Tensor linear_int8_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                    const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                                    PrecisionName precision) {
  check_int8_arguments(grad_output, weight, scale, zero_point);
  return math::input_gradient(grad_output, math::stored_int8_weight(weight, scale, zero_point), resolve(precision));
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

at::Tensor linear_int8_backward_autograd(const at::Tensor& grad_output, const at::Tensor& weight,
                                         const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                                         PrecisionName precision) {
  check_int8_tensors(grad_output, weight, scale, zero_point);
  if (!differentiating(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_linear_int8_backward(grad_output, weight, scale, zero_point, precision);
  }
  return LinearInt8BackwardFunction::apply(grad_output, weight, scale, zero_point, precision);
}

// ---- linear_dynamic_backward, linear_dynamic_fp16_backward -----------------------

using detail::WeightKind;

template <WeightKind kind>
at::Tensor packed_backward_cpu(const at::Tensor& grad_output, const PackedParams& packed,
                               PrecisionName precision) {
  check_packed_tensors(grad_output);
  const auto weight = detail::stored_weight(packed, kind);
  check_grad_output(grad_output, weight.out_features());
  return math::input_gradient(grad_output, weight, resolve(precision));
}

void prepare_cpu(const PackedParams& packed) {
  detail::stored_weight(packed, std::nullopt);
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
    return {math::input_gradient_adjoint(grads[0], detail::stored_weight(packed, kind)), at::Tensor(), at::Tensor()};
  }
};

template <WeightKind kind>
at::Tensor packed_backward_autograd(const at::Tensor& grad_output, const PackedParams& packed,
                                    PrecisionName precision) {
  check_packed_tensors(grad_output);
  if (!differentiating(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_packed_backward(kind, grad_output, packed, precision);
  }
  return PackedBackwardFunction<kind>::apply(grad_output, packed, precision);
}

} // namespace

// ---- public C++ API -------------------------------------------------------------

at::Tensor linear_dynamic_backward(const at::Tensor& grad_output, const PackedParams& packed,
                                   std::optional<Precision> precision) {
  return call_packed_backward(detail::WeightKind::kQInt8, grad_output, packed, name_of(precision));
}

at::Tensor linear_dynamic_fp16_backward(const at::Tensor& grad_output, const PackedParams& packed,
                                        std::optional<Precision> precision) {
  return call_packed_backward(detail::WeightKind::kFloat16, grad_output, packed, name_of(precision));
}

at::Tensor linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight,
                                const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                                std::optional<Precision> precision) {
  return call_linear_int8_backward(grad_output, weight, scale, zero_point, name_of(precision));
}

void prepare(const PackedParams& packed) {
  static const auto op = operator_handle<PrepareFn>("qlgrad::prepare");
  op.call(packed);
}

} // namespace qlgrad

QLGRAD_LIBRARY(qlgrad, m) {
  m.def("linear_dynamic_backward(Tensor grad_output, "
        "__torch__.torch.classes.quantized.LinearPackedParamsBase packed, str? precision=None) -> Tensor");
  m.def("linear_dynamic_fp16_backward(Tensor grad_output, "
        "__torch__.torch.classes.quantized.LinearPackedParamsBase packed, str? precision=None) -> Tensor");
  m.def("linear_int8_backward(Tensor grad_output, Tensor weight, Tensor scale, "
        "Tensor? zero_point=None, str? precision=None) -> Tensor");
  // No tensor argument to dispatch on: a catch-all kernel.
  m.def("prepare(__torch__.torch.classes.quantized.LinearPackedParamsBase packed) -> ()",
        &qlgrad::prepare_cpu);
}

QLGRAD_LIBRARY_IMPL(qlgrad, CPU, m) {
  m.impl("linear_dynamic_backward", &qlgrad::packed_backward_cpu<qlgrad::detail::WeightKind::kQInt8>);
  m.impl("linear_dynamic_fp16_backward", &qlgrad::packed_backward_cpu<qlgrad::detail::WeightKind::kFloat16>);
  m.impl("linear_int8_backward", &qlgrad::linear_int8_backward_cpu);
}

QLGRAD_LIBRARY_IMPL(qlgrad, Autograd, m) {
  m.impl("linear_dynamic_backward", &qlgrad::packed_backward_autograd<qlgrad::detail::WeightKind::kQInt8>);
  m.impl("linear_dynamic_fp16_backward", &qlgrad::packed_backward_autograd<qlgrad::detail::WeightKind::kFloat16>);
  m.impl("linear_int8_backward", &qlgrad::linear_int8_backward_autograd);
}
