// Autograd kernels for the dynamic linear family of quantized:: ops — what
// quantize_dynamic puts in place of nn.Linear — none of which has one upstream:
//   linear_dynamic, linear_relu_dynamic            (qint8 weights)
//   linear_dynamic_fp16, linear_relu_dynamic_fp16  (float16 weights)

#include "packed_weight.h"
#include "registration.h"

#include <qlgrad/qlgrad.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/where.h>
#include <torch/csrc/autograd/custom_function.h>

#include <c10/util/FunctionRef.h>

namespace qlgrad {
namespace {

using detail::PackedParams;
using detail::WeightKind;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The C++ signatures of the stock CPU kernels, argument for argument.
using Int8Fn = at::Tensor(at::Tensor, const PackedParams&, bool);
using Fp16Fn = at::Tensor(at::Tensor, const PackedParams&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> stock_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// Straight-through estimator: quantize-then-dequantize of the activation is taken as
// the identity, so grad_input = grad_output @ W_deq, masked by output > 0 for the
// fused ReLU. The node holds the packed params, the backward precision in effect at
// forward time (as autocast records its dtype) and, with ReLU, a 1-byte mask; no
// activation is saved.
struct DynamicLinearFunction : torch::autograd::Function<DynamicLinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& /*input*/, const PackedParams& packed,
                            WeightKind kind, bool relu, c10::function_ref<at::Tensor()> stock_forward) {
    ctx->saved_data["packed"] = packed;
    ctx->saved_data["kind"] = static_cast<int64_t>(kind);
    ctx->saved_data["precision"] = static_cast<int64_t>(backward_precision());
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = stock_forward();
    }
    if (relu) {
      ctx->save_for_backward({output.gt(0)});
    }
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto packed = ctx->saved_data["packed"].toCustomClass<LinearPackedParamsBase>();
    const auto precision = static_cast<Precision>(ctx->saved_data["precision"].toInt());
    const auto saved = ctx->get_saved_variables();
    // where, not a product with the mask: a NaN or Inf gradient the ReLU cut off must
    // not come back as NaN (0 * Inf), just as torch.relu's backward gives 0 there.
    const at::Tensor grad_output = saved.empty() ? grad_outputs[0] : at::where(saved[0], grad_outputs[0], 0.0);
    const at::Tensor grad_input =
        static_cast<WeightKind>(ctx->saved_data["kind"].toInt()) == WeightKind::kQInt8
            ? linear_dynamic_backward(grad_output, packed, precision)
            : linear_dynamic_fp16_backward(grad_output, packed, precision);
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor differentiable(const at::Tensor& input, const PackedParams& packed, WeightKind kind, bool relu,
                          c10::function_ref<at::Tensor()> stock_forward) {
  // Without anything to differentiate, no node is made and nothing is saved.
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stock_forward();
  }
  return DynamicLinearFunction::apply(input, packed, kind, relu, stock_forward);
}

template <bool relu>
at::Tensor int8_autograd(at::Tensor input, const PackedParams& packed, bool reduce_range) {
  static const auto op = stock_op<Int8Fn>(relu ? "quantized::linear_relu_dynamic" : "quantized::linear_dynamic");
  return differentiable(input, packed, WeightKind::kQInt8, relu,
                        [&] { return op.call(input, packed, reduce_range); });
}

template <bool relu>
at::Tensor fp16_autograd(at::Tensor input, const PackedParams& packed) {
  static const auto op =
      stock_op<Fp16Fn>(relu ? "quantized::linear_relu_dynamic_fp16" : "quantized::linear_dynamic_fp16");
  return differentiable(input, packed, WeightKind::kFloat16, relu, [&] { return op.call(input, packed); });
}

} // namespace
} // namespace qlgrad

QLGRAD_LIBRARY_IMPL(quantized, Autograd, m) {
  m.impl("linear_dynamic", &qlgrad::int8_autograd<false>);
  m.impl("linear_relu_dynamic", &qlgrad::int8_autograd<true>);
  m.impl("linear_dynamic_fp16", &qlgrad::fp16_autograd<false>);
  m.impl("linear_relu_dynamic_fp16", &qlgrad::fp16_autograd<true>);
}
