// Autograd kernel for quantized::linear_dynamic: the op that every
// torch.ao.nn.quantized.dynamic.Linear calls, and that has no Autograd kernel upstream.

#include "registration.h"

#include <qlgrad/qlgrad.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

namespace qlgrad {
namespace {

using PackedParams = c10::intrusive_ptr<LinearPackedParamsBase>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The C++ signature of the stock CPU kernel, argument for argument.
using LinearDynamicFn = at::Tensor(at::Tensor, const PackedParams&, bool);

at::Tensor stock_linear_dynamic(at::Tensor input, const PackedParams& packed, bool reduce_range) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("quantized::linear_dynamic", "")
                             .typed<LinearDynamicFn>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(std::move(input), packed, reduce_range);
}

// Straight-through estimator: quantize-then-dequantize of the activation is taken
// as the identity, so grad_input = grad_output @ W_deq. The node holds only the
// packed params and the backward precision in effect at forward time (as autocast
// records its dtype); no activation is saved.
struct LinearDynamicFunction : torch::autograd::Function<LinearDynamicFunction> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor input, const PackedParams& packed,
                            bool reduce_range) {
    ctx->saved_data["packed"] = packed;
    ctx->saved_data["precision"] = static_cast<int64_t>(backward_precision());
    return stock_linear_dynamic(std::move(input), packed, reduce_range);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto packed = ctx->saved_data["packed"].toCustomClass<LinearPackedParamsBase>();
    const auto precision = static_cast<Precision>(ctx->saved_data["precision"].toInt());
    return {linear_dynamic_backward(grad_outputs[0], packed, precision), at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_dynamic_autograd(at::Tensor input, const PackedParams& packed, bool reduce_range) {
  // Without anything to differentiate, no node is made and nothing is saved.
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    return stock_linear_dynamic(std::move(input), packed, reduce_range);
  }
  return LinearDynamicFunction::apply(std::move(input), packed, reduce_range);
}

} // namespace
} // namespace qlgrad

QLGRAD_LIBRARY_IMPL(quantized, Autograd, m) {
  m.impl("linear_dynamic", &qlgrad::linear_dynamic_autograd);
}
