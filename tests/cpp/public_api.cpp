// The public C++ API used directly, without TorchScript: the packed and the plain-int8
// backward against a float64 reference, and double backward through the plain one.

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

  return tally.finish();
}
