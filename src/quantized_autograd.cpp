// The Autograd kernels, and the AutocastCPU kernels, of the dynamic linear family of
// quantized:: ops (what quantize_dynamic puts in place of nn.Linear), none of which has them
// upstream. Registration is at the bottom.
//   linear_dynamic, linear_relu_dynamic            (qint8 weights)
//   linear_dynamic_fp16, linear_relu_dynamic_fp16  (float16 weights)

#include "dynamic_linear_ops.h"
#include "packed_weight.h"
#include "register_once.h"

#include <qlgrad/qlgrad.h>

#include <ATen/autocast_mode.h>
#include <ATen/ops/where.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <c10/util/FunctionRef.h>

#include <mutex>
#include <vector>

namespace qlgrad {
namespace {

using detail::fp16_op;
using detail::int8_op;
using detail::PackedParams;
using detail::WeightKind;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// What one op of the family is, for its backward node.
struct OpTraits {
  WeightKind kind;
  bool relu;
  const char* node_name;
};

// grad_output' = grad_output where the fused ReLU passed the value, else 0. where, not
// a product with the mask: a NaN or Inf gradient the ReLU cut off must not come back
// as NaN (0 * Inf), just as torch.relu's backward gives 0 there.
at::Tensor through_relu(const at::Tensor& grad, const at::Tensor& passed) {
  return at::where(passed, grad, 0.0);
}

// t @ W_deq.T in t's dtype, with the exact weight: the adjoint of the input gradient
// (double backward) and the forward-mode derivative of the op (jvp).
at::Tensor times_weight_transposed(WeightKind kind, const at::Tensor& t, const PackedParams& packed) {
  std::optional<math::StoredWeight> weight;
  {
    // The weight is a constant of every transform: inside torch.func.jvp or grad its codes must
    // be copied out of their packing as plain tensors, not ones wrapped by the transform
    // (weight_of_packed itself makes plain tensors).
    c10::impl::ExcludeDispatchKeyGuard outside_functorch(c10::DispatchKeySet(
        {c10::DispatchKey::FuncTorchDynamicLayerFrontMode, c10::DispatchKey::FuncTorchDynamicLayerBackMode}));
    weight = math::unblocked(detail::weight_of_packed(packed, kind));
  }
  return math::input_gradient_adjoint(t, *weight);
}

// The input gradient grad_output @ W_deq as a function of grad_output, for double
// backward: linear, so its derivative is the adjoint (exact, whatever precision the first
// order used), and every higher order follows through ATen.
struct InputGradientBackward final : torch::autograd::TraceableFunction {
  InputGradientBackward(WeightKind kind, PackedParams packed) : kind_(kind), packed_(std::move(packed)) {}

  variable_list apply(variable_list&& grads) override {
    return {grads[0].defined() ? times_weight_transposed(kind_, grads[0], packed_) : at::Tensor()};
  }

  std::string name() const override { return "LinearDynamicInputGradientBackward"; }

  const WeightKind kind_;
  const PackedParams packed_;
};

// Straight-through estimator: quantize-then-dequantize of the activation is taken as
// the identity, so grad_input = grad_output @ W_deq, masked by output > 0 for the
// fused ReLU. A native node with typed fields, as PyTorch's generated ones are: it is
// cheaper to record than a C++ autograd::Function (whose saved data is a string-keyed
// map of IValues), and functorch transforms (torch.func.grad, vjp, vmap) accept it,
// where they refuse any C++ autograd::Function. It holds the packed params, the
// backward precision chosen at forward time (as autocast records its dtype; none: the
// gradient's dtype decides when backward runs) and, with ReLU, a 1-byte mask; no activation
// is saved.
struct DynamicLinearBackward final : torch::autograd::TraceableFunction {
  DynamicLinearBackward(const OpTraits& op, PackedParams packed, std::optional<Precision> chosen,
                        std::vector<int64_t> input_sizes)
      : op_(op), packed_(std::move(packed)), chosen_(chosen), input_sizes_(std::move(input_sizes)) {}

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) {
      return {at::Tensor()};
    }
    const at::Tensor grad_output = op_.relu ? through_relu(grads[0], passed_.unpack(getptr())) : grads[0];
    // With create_graph (and inside torch.func.grad, which always creates one), the input
    // gradient gets a native node too: the backward operators' own Autograd kernels use
    // C++ autograd::Functions, which functorch refuses.
    const bool create_graph = torch::autograd::compute_requires_grad(grad_output);
    at::Tensor grad_input = input_gradient(create_graph ? grad_output.detach() : grad_output);
    if (grad_input.numel() == 0 && grad_input.sizes() != input_sizes_) {
      // The stock onednn kernel maps an empty [B, 0, K] input to a [0, N] output: the gradient
      // of that output is the input's, empty, in the input's shape.
      grad_input = grad_input.new_zeros(input_sizes_);
    }
    if (create_graph) {
      auto node = c10::make_intrusive<InputGradientBackward>(op_.kind, packed_);
      node->set_next_edges(torch::autograd::collect_next_edges(grad_output));
      torch::autograd::set_history(grad_input, node);
    }
    return {grad_input};
  }

  std::string name() const override { return op_.node_name; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    passed_.reset_data();
  }

  at::Tensor input_gradient(const at::Tensor& grad_output) const {
    const Precision precision = effective_backward_precision(chosen_, grad_output.scalar_type());
    return op_.kind == WeightKind::kQInt8 ? linear_dynamic_backward(grad_output, packed_, precision)
                                          : linear_dynamic_fp16_backward(grad_output, packed_, precision);
  }

  const OpTraits& op_;
  const PackedParams packed_;
  const std::optional<Precision> chosen_;
  SavedVariable passed_;  // ReLU only: output > 0
  const std::vector<int64_t> input_sizes_;
};

// Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad): the same
// straight-through estimator, tangent_out = tangent_in @ W_deq.T, masked like the output.
at::Tensor output_tangent(const OpTraits& op, const at::Tensor& input_tangent, const PackedParams& packed,
                          const at::Tensor& output) {
  const auto tangent = times_weight_transposed(op.kind, input_tangent, packed);
  return op.relu ? through_relu(tangent, output.gt(0)) : tangent;
}

// What every Autograd kernel of the family does: the stock forward below autograd; then, for
// an input that requires grad, the backward node, and for one with a tangent, the output's.
at::Tensor autograd_kernel(const OpTraits& op, const at::Tensor& input, const PackedParams& packed,
                           c10::function_ref<at::Tensor()> stock_forward) {
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = stock_forward();
  }
  // Without anything to differentiate, no node is made and nothing is saved.
  if (torch::autograd::compute_requires_grad(input)) {
    auto node =
        c10::make_intrusive<DynamicLinearBackward>(op, packed, chosen_backward_precision(), input.sizes().vec());
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    if (op.relu) {
      node->passed_ = SavedVariable(output.gt(0), /*is_output=*/false);
    }
    torch::autograd::set_history(output, node);
  }
  if (torch::autograd::isFwGradDefined(input)) {
    output._set_fw_grad(output_tangent(op, input._fw_grad(/*level=*/0), packed, output), /*level=*/0,
                        /*is_inplace_op=*/false);
  }
  return output;
}

constexpr OpTraits kLinearDynamic{WeightKind::kQInt8, false, "LinearDynamicBackward"};
constexpr OpTraits kLinearReluDynamic{WeightKind::kQInt8, true, "LinearReluDynamicBackward"};
constexpr OpTraits kLinearDynamicFp16{WeightKind::kFloat16, false, "LinearDynamicFp16Backward"};
constexpr OpTraits kLinearReluDynamicFp16{WeightKind::kFloat16, true, "LinearReluDynamicFp16Backward"};

template <const OpTraits& op>
at::Tensor int8_autograd(at::Tensor input, const PackedParams& packed, bool reduce_range) {
  return autograd_kernel(op, input, packed, [&] { return int8_op(op.relu).call(input, packed, reduce_range); });
}

template <const OpTraits& op>
at::Tensor fp16_autograd(at::Tensor input, const PackedParams& packed) {
  return autograd_kernel(op, input, packed, [&] { return fp16_op(op.relu).call(input, packed); });
}

// Autocast: the stock kernels take float32 activations only, so a bfloat16 or float16
// activation from an autocast region is cast to float32 (the cast is differentiable:
// the gradient goes back in the incoming dtype), and the output stays float32, as for
// every op on autocast's fp32 list.
at::Tensor autocast_input(const at::Tensor& input) {
  return at::autocast::cached_cast(at::kFloat, input, c10::DeviceType::CPU);
}

template <bool relu>
at::Tensor int8_autocast(at::Tensor input, const PackedParams& packed, bool reduce_range) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return int8_op(relu).call(autocast_input(input), packed, reduce_range);
}

template <bool relu>
at::Tensor fp16_autocast(at::Tensor input, const PackedParams& packed) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return fp16_op(relu).call(autocast_input(input), packed);
}

} // namespace
} // namespace qlgrad

QLGRAD_LIBRARY_IMPL_ONCE(quantized, Autograd, m) {
  m.impl("linear_dynamic", &qlgrad::int8_autograd<qlgrad::kLinearDynamic>);
  m.impl("linear_relu_dynamic", &qlgrad::int8_autograd<qlgrad::kLinearReluDynamic>);
  m.impl("linear_dynamic_fp16", &qlgrad::fp16_autograd<qlgrad::kLinearDynamicFp16>);
  m.impl("linear_relu_dynamic_fp16", &qlgrad::fp16_autograd<qlgrad::kLinearReluDynamicFp16>);
}

QLGRAD_LIBRARY_IMPL_ONCE(quantized, AutocastCPU, m) {
  m.impl("linear_dynamic", &qlgrad::int8_autocast<false>);
  m.impl("linear_relu_dynamic", &qlgrad::int8_autocast<true>);
  m.impl("linear_dynamic_fp16", &qlgrad::fp16_autocast<false>);
  m.impl("linear_relu_dynamic_fp16", &qlgrad::fp16_autocast<true>);
}
