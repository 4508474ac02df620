// The public C++ API used directly, without TorchScript: the packed and the plain-int8
// backward against a float64 reference, and double backward through the plain one.

#include <qlgrad/qlgrad.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <iostream>
#include <string>

namespace {

int passed = 0;
int failed = 0;

void expect_close(const std::string& name, const at::Tensor& got, const at::Tensor& expected) {
  const bool ok = got.sizes() == expected.sizes() &&
                  at::allclose(got.to(at::kDouble), expected.to(at::kDouble), 1e-5, 1e-6);
  (ok ? passed : failed) += 1;
  std::cout << (ok ? "PASS " : "FAIL ") << name << "\n";
}

c10::intrusive_ptr<LinearPackedParamsBase> prepack(const at::Tensor& qweight) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("quantized::linear_prepack", "")
          .typed<c10::intrusive_ptr<LinearPackedParamsBase>(at::Tensor, std::optional<at::Tensor>)>();
  return op.call(qweight, std::nullopt);
}

} // namespace

int main() {
  at::manual_seed(0);
  const int64_t out_features = 24, in_features = 40;
  const at::Tensor weight = at::randint(-128, 128, {out_features, in_features}, at::kChar);
  const at::Tensor scale = at::rand({out_features}, at::kDouble) * 0.01 + 0.001;
  const at::Tensor zero_point = at::randint(-3, 4, {out_features}, at::kLong);
  const at::Tensor dequantized = (weight.to(at::kDouble) - zero_point.unsqueeze(1)) * scale.unsqueeze(1);
  const at::Tensor grad_output = at::randn({2, 3, out_features});
  const at::Tensor expected = at::matmul(grad_output.to(at::kDouble), dequantized);

  expect_close("linear_int8_backward per channel",
               qlgrad::linear_int8_backward(grad_output, weight, scale, zero_point), expected);

  const at::Tensor qweight = at::_make_per_channel_quantized_tensor(weight, scale, zero_point, 0);
  expect_close("linear_dynamic_backward per channel",
               qlgrad::linear_dynamic_backward(grad_output, prepack(qweight)), expected);

  // The map is linear in grad_output: its vector-Jacobian product is v @ W_deq.T.
  const at::Tensor g = grad_output.to(at::kDouble).requires_grad_(true);
  const at::Tensor v = at::randn({2, 3, in_features}, at::kDouble);
  const at::Tensor gg = torch::autograd::grad({qlgrad::linear_int8_backward(g, weight, scale, zero_point)}, {g}, {v})[0];
  expect_close("double backward", gg, at::matmul(v, dequantized.t()));

  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}
