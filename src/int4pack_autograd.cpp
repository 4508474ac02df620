// The Autograd kernel of aten::_weight_int4pack_mm_for_cpu, torch's CPU int4 weight-only linear
// (torchao's Int4OpaqueTensor calls it), whose derivative upstream is "not implemented", and
// the forward it runs from the packing where the input requires grad, or where a product from
// the packing is torch's result bit for bit; and its AutocastCPU kernel. Registration is at the
// bottom.

#include "backward_math.h"
#include "matmul.h"
#include "operator_handle.h"
#include "register_once.h"

#include <qlgrad/qlgrad.h>

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

namespace qlgrad {
namespace {

using Int4packMmFn = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&);

// y = x @ W.T, so grad_x = grad_y @ W: the straight-through gradient for an activation that was
// never quantized. The weight, its group size and its parameters are the op's constants; the
// node keeps references to them (no copy), and the backward precision chosen at forward time,
// resolved against the gradient's dtype when backward runs, as for the other layers. No gradient
// flows to the packed weight or to scale_and_zeros.
struct Int4packMmBackward final : torch::autograd::TraceableFunction {
  Int4packMmBackward(at::Tensor packed, int64_t group_size, at::Tensor scale_and_zeros, std::optional<Precision> chosen)
      : packed_(std::move(packed)),
        group_size_(group_size),
        scale_and_zeros_(std::move(scale_and_zeros)),
        chosen_(chosen) {}

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!grads[0].defined()) {
      return {at::Tensor()};
    }
    // Through the dispatcher: with create_graph, qlgrad::linear_int4pack_backward's own Autograd
    // kernel records the double backward.
    const Precision precision = effective_backward_precision(chosen_, grads[0].scalar_type());
    return {linear_int4pack_backward(grads[0], packed_, group_size_, scale_and_zeros_, precision)};
  }

  std::string name() const override { return "WeightInt4PackMmForCpuBackward"; }

  void release_variables() override {
    packed_.reset();
    scale_and_zeros_.reset();
  }

  at::Tensor packed_;
  const int64_t group_size_;
  at::Tensor scale_and_zeros_;
  const std::optional<Precision> chosen_;
};

// Whether qlgrad's forward reads these arguments, as torch's op takes them: else torch's op runs
// (and refuses what it does not take, with its own message).
bool reads_packing(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                   const at::Tensor& scale_and_zeros) {
  const auto dtype = input.scalar_type();
  return (dtype == at::kFloat || dtype == at::kBFloat16) && input.dim() == 2 && input.device().is_cpu() &&
         packed.device().is_cpu() && packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous() &&
         (group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256) &&
         scale_and_zeros.scalar_type() == dtype && scale_and_zeros.device().is_cpu() && scale_and_zeros.dim() == 3 &&
         scale_and_zeros.size(2) == 2 && scale_and_zeros.size(1) == packed.size(0) &&
         scale_and_zeros.size(1) % 16 == 0 && scale_and_zeros.size(0) * group_size == input.size(1) &&
         packed.size(1) * 2 == input.size(1);
}

// qlgrad::_int4pack_linear: torch's op where it is the faster (a few rows), else the product
// from the packing (math::int4pack_linear), equal to torch's up to the rounding of float sums
// (and, with bfloat16 products, of the weight to bfloat16).
at::Tensor int4pack_linear_cpu(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                               const at::Tensor& scale_and_zeros) {
  if (!reads_packing(input, packed, group_size, scale_and_zeros) ||
      !math::int4pack_linear_is_faster(input.size(0), input.scalar_type())) {
    return at::_weight_int4pack_mm_for_cpu(input, packed, group_size, scale_and_zeros);
  }
  // Detached: the out= GEMM of MKL's tiles (CPUs without the panel GEMM), called from the kernel's
  // worker threads, refuses an input that requires grad.
  return math::int4pack_linear(input.detach().contiguous(), packed, group_size,
                               math::int4_packed_weight(packed, group_size, scale_and_zeros).scale_and_zeros);
}

// torch's int4 kernel's bfloat16 output from its float32 sums: rounded to nearest even, a NaN as
// 0xFFFF, as at::vec's conversion (cvtfp32_bf16) gives it.
at::Tensor rounded_as_torchs_kernel(const at::Tensor& sums) {
  auto rounded = sums.to(at::kBFloat16);
  rounded.view(at::kShort).masked_fill_(sums.isnan(), -1);
  return rounded;
}

// Where the input requires grad, the forward is qlgrad's op, which reads the packing when that is
// the faster; elsewhere it is torch's, bit for bit: torch's own kernel, or qlgrad's product of the
// float32 values where that is torch's result (math::int4pack_linear_is_torchs) and the faster.
at::Tensor int4pack_mm_autograd(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                                const at::Tensor& scale_and_zeros) {
  static const auto stock = detail::operator_handle<Int4packMmFn>("aten::_weight_int4pack_mm_for_cpu");
  static const auto from_packing = detail::operator_handle<Int4packMmFn>("qlgrad::_int4pack_linear");
  const bool requires_grad = torch::autograd::compute_requires_grad(input);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (requires_grad) {
      output = from_packing.call(input, packed, group_size, scale_and_zeros);
    } else if (!reads_packing(input, packed, group_size, scale_and_zeros) ||
               !math::int4pack_linear_is_torchs(input.size(0), packed.size(0), input.scalar_type())) {
      output = stock.call(input, packed, group_size, scale_and_zeros);
    } else if (input.scalar_type() == at::kFloat) {
      output = from_packing.call(input, packed, group_size, scale_and_zeros);
    } else {
      output = rounded_as_torchs_kernel(
          from_packing.call(input.to(at::kFloat), packed, group_size, scale_and_zeros.to(at::kFloat)));
    }
  }
  if (requires_grad) {
    auto node =
        c10::make_intrusive<Int4packMmBackward>(packed, group_size, scale_and_zeros, chosen_backward_precision());
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    torch::autograd::set_history(output, node);
  }
  return output;
}

// Autocast: where the input requires grad, a linear layer on autocast's lower-precision list, as
// aten::linear is. The input and scale_and_zeros (which torch's op takes in the input's dtype) are
// cast to the region's dtype, as autocast casts a dense layer's weight, and the op runs there:
// with bfloat16 products in the training forward and the backward (the `bf16` default for
// bfloat16 gradients; the input's cast is differentiable, so its gradient goes back in the
// incoming dtype). The int4 codes stay as they are; only the parameters (two per group of codes)
// are copied. Where no input requires grad, torch's op on the arguments as they come, bit for bit,
// as without qlgrad (like the training forward from the packing, the cast is training's alone),
// unless their dtypes differ, which torch's op refuses: an activation that an earlier layer of the
// region left in bfloat16 meets a float32 model's scale_and_zeros, and both are cast.
at::Tensor int4pack_mm_autocast(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                                const at::Tensor& scale_and_zeros) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  if (!torch::autograd::compute_requires_grad(input) && input.scalar_type() == scale_and_zeros.scalar_type()) {
    return at::_weight_int4pack_mm_for_cpu(input, packed, group_size, scale_and_zeros);
  }
  const auto dtype = at::autocast::get_autocast_dtype(at::kCPU);
  return at::_weight_int4pack_mm_for_cpu(at::autocast::cached_cast(dtype, input, c10::DeviceType::CPU), packed,
                                         group_size,
                                         at::autocast::cached_cast(dtype, scale_and_zeros, c10::DeviceType::CPU));
}

} // namespace
} // namespace qlgrad

QLGRAD_LIBRARY_IMPL_ONCE(qlgrad, CPU, m) {
  m.impl("_int4pack_linear", &qlgrad::int4pack_linear_cpu);
}

// AutogradCPU, not the Autograd alias: a kernel registered for the runtime key takes precedence
// over upstream's "not implemented" one for the alias, without replacing it.
QLGRAD_LIBRARY_IMPL_ONCE(aten, AutogradCPU, m) {
  m.impl("_weight_int4pack_mm_for_cpu", &qlgrad::int4pack_mm_autograd);
}

QLGRAD_LIBRARY_IMPL_ONCE(aten, AutocastCPU, m) {
  m.impl("_weight_int4pack_mm_for_cpu", &qlgrad::int4pack_mm_autocast);
}
