// The public C++ API used directly, without TorchScript: the packed and the plain-int8
// backward against a float64 reference, double backward through the plain one, and the backward
// precision that follows the gradient's dtype where none is chosen.

#include "testing.h"

#include <qlgrad/qlgrad.h>

#include <torch/autograd.h>

namespace {

bool close(const at::Tensor& got, const at::Tensor& expected) {
  return got.sizes() == expected.sizes() && at::allclose(got.to(at::kDouble), expected.to(at::kDouble), 1e-5, 1e-6);
}

} // namespace

int main() {
  qlgrad_test::Tally tally;
  at::manual_seed(0);
  const int64_t out_features = 24, in_features = 40;
  const at::Tensor weight = at::randint(-128, 128, {out_features, in_features}, at::kChar);
  const at::Tensor scale = at::rand({out_features}, at::kDouble) * 0.01 + 0.001;
  const at::Tensor zero_point = at::randint(-3, 4, {out_features}, at::kLong);
  const at::Tensor dequantized = (weight.to(at::kDouble) - zero_point.unsqueeze(1)) * scale.unsqueeze(1);
  const at::Tensor grad_output = at::randn({2, 3, out_features});
  const at::Tensor expected = at::matmul(grad_output.to(at::kDouble), dequantized);

  tally.check("linear_int8_backward per channel",
              close(qlgrad::linear_int8_backward(grad_output, weight, scale, zero_point), expected));

  const at::Tensor qweight = at::_make_per_channel_quantized_tensor(weight, scale, zero_point, 0);
  tally.check("linear_dynamic_backward per channel",
              close(qlgrad::linear_dynamic_backward(grad_output, qlgrad_test::prepack_int8(qweight)), expected));

  // The map is linear in grad_output: its vector-Jacobian product is v @ W_deq.T.
  const at::Tensor g = grad_output.to(at::kDouble).requires_grad_(true);
  const at::Tensor v = at::randn({2, 3, in_features}, at::kDouble);
  const at::Tensor gg =
      torch::autograd::grad({qlgrad::linear_int8_backward(g, weight, scale, zero_point)}, {g}, {v})[0];
  tally.check("double backward", close(gg, at::matmul(v, dequantized.t())));

  // With no precision chosen the precision follows the gradient's dtype: bf16 for bfloat16.
  tally.check("nothing chosen",
              !qlgrad::chosen_backward_precision() && qlgrad::get_backward_precision() == qlgrad::Precision::kFloat32);
  tally.check("bfloat16 gradients run bf16",
              qlgrad::effective_backward_precision(std::nullopt, at::kBFloat16) == qlgrad::Precision::kBFloat16);
  for (const auto dtype : {at::kFloat, at::kHalf, at::kDouble}) {
    tally.check("other gradients run fp32",
                qlgrad::effective_backward_precision(std::nullopt, dtype) == qlgrad::Precision::kFloat32);
  }
  for (const qlgrad::Precision precision : qlgrad::kPrecisions) {
    tally.check("a choice holds for bfloat16",
                qlgrad::effective_backward_precision(precision, at::kBFloat16) == precision);
  }
  // More rows than the streams (float32 in every precision) take.
  const at::Tensor grad_bf16 = at::randn({64, out_features}).to(at::kBFloat16);
  const auto backward = [&](std::optional<qlgrad::Precision> precision) {
    return qlgrad::linear_int8_backward(grad_bf16, weight, scale, zero_point, precision);
  };
  const at::Tensor as_bf16 = backward(qlgrad::Precision::kBFloat16);
  const at::Tensor as_fp32 = backward(qlgrad::Precision::kFloat32);
  tally.check("default for bfloat16 is bf16", at::equal(backward(std::nullopt), as_bf16));
  tally.check("bf16 is not fp32 here", !at::equal(as_bf16, as_fp32));
  {
    qlgrad::BackwardPrecisionGuard guard(qlgrad::Precision::kFloat32);
    tally.check("guard's fp32", at::equal(backward(std::nullopt), as_fp32));
  }
  qlgrad::set_backward_precision(qlgrad::Precision::kFloat32);
  tally.check("process-wide fp32", at::equal(backward(std::nullopt), as_fp32) &&
                                       qlgrad::chosen_backward_precision() == qlgrad::Precision::kFloat32);
  qlgrad::set_backward_precision(std::nullopt);
  tally.check("none chosen again", !qlgrad::chosen_backward_precision() && at::equal(backward(std::nullopt), as_bf16));

  return tally.finish();
}
