// A C++ consumer of the aarch64 libqlgrad, run under qemu by scripts/check_aarch64.sh: the public
// backward functions against a float64 reference through the portable kernels (the only ones an
// aarch64 build has), for every weight scheme and precision and for row counts that reach each
// of them (streamed, tiled), double backward, and packed params from the quantized engines that
// torch's aarch64 build can pack with.

#include "testing.h"

#include <qlgrad/qlgrad.h>

#include <torch/autograd.h>

#include <cstdio>
#include <optional>
#include <string>

namespace {

// The bounds of tests/helpers.py: relative error in norm against the float64 reference.
double error_bound(qlgrad::Precision precision) {
  switch (precision) {
    case qlgrad::Precision::kFloat32: return 1e-6;
    case qlgrad::Precision::kBFloat16: return 1e-2;
    case qlgrad::Precision::kInt8: return 2e-2;
  }
  return 0;
}

double relative_error(const at::Tensor& got, const at::Tensor& expected) {
  return ((got.to(at::kDouble) - expected).norm() / expected.norm()).item<double>();
}

// Checks got against expected within bound, with the error as the detail.
void check_close(qlgrad_test::Tally& tally, const std::string& name, const at::Tensor& got, const at::Tensor& expected,
                 double bound) {
  const double error = got.sizes() == expected.sizes() ? relative_error(got, expected) : -1;
  char detail[64];
  std::snprintf(detail, sizeof detail, "relative error %.1e", error);
  tally.check(name, error >= 0 && error <= bound, detail);
}

struct Scheme {
  std::string name;
  at::Tensor scale;
  std::optional<at::Tensor> zero_point;
  at::Tensor dequantized;  // float64
};

} // namespace

int main() {
  qlgrad_test::Tally tally;
  at::manual_seed(0);
  std::cout << "cpu_capability: " << qlgrad::cpu_capability() << "\n";

  const int64_t out_features = 32, in_features = 64, groups = 4, group_size = in_features / groups;
  const at::Tensor weight = at::randint(-128, 128, {out_features, in_features}, at::kChar);
  const at::Tensor codes = weight.to(at::kDouble);
  const at::Tensor channel_scale = at::rand({out_features}, at::kDouble) * 0.01 + 0.001;
  const at::Tensor channel_zero = at::randint(-3, 4, {out_features}, at::kLong);
  const at::Tensor group_scale = at::rand({out_features, groups}, at::kDouble) * 0.01 + 0.001;
  const at::Tensor group_zero = at::randint(-3, 4, {out_features, groups}, at::kLong);
  const Scheme schemes[] = {
      {"per tensor", at::full({1}, 0.02, at::kDouble), std::nullopt, codes * 0.02},
      {"per channel", channel_scale, channel_zero, (codes - channel_zero.unsqueeze(1)) * channel_scale.unsqueeze(1)},
      {"group-wise", group_scale, group_zero,
       (codes - group_zero.repeat_interleave(group_size, 1)) * group_scale.repeat_interleave(group_size, 1)},
  };

  for (const auto& scheme : schemes) {
    for (const int64_t rows : {1, 7, 300}) {
      const at::Tensor grad_output = at::randn({rows, out_features});
      const at::Tensor expected = at::matmul(grad_output.to(at::kDouble), scheme.dequantized);
      for (const auto precision : qlgrad::kPrecisions) {
        check_close(tally,
                    "linear_int8_backward " + scheme.name + ", " + std::to_string(rows) + " rows, " +
                        qlgrad::precision_name(precision),
                    qlgrad::linear_int8_backward(grad_output, weight, scheme.scale, scheme.zero_point, precision),
                    expected, error_bound(precision));
      }
    }
  }

  // The map is linear in grad_output: its vector-Jacobian product is v @ W_deq.T.
  const Scheme& channel = schemes[1];
  const at::Tensor g = at::randn({2, 3, out_features}, at::kDouble).requires_grad_(true);
  const at::Tensor v = at::randn({2, 3, in_features}, at::kDouble);
  const at::Tensor gg =
      torch::autograd::grad({qlgrad::linear_int8_backward(g, weight, channel.scale, channel.zero_point)}, {g}, {v})[0];
  check_close(tally, "double backward", gg, at::matmul(v, channel.dequantized.t()), 1e-12);

  // Packed params, read through the weight cache. torch's default engine on aarch64 is x86
  // (fbgemm), whose packing refuses CPUs without AVX2; QNNPACK and oneDNN pack there, oneDNN
  // symmetric weights only (as quantize_dynamic makes them).
  const at::Tensor grad_output = at::randn({5, out_features});
  const at::Tensor expected = at::matmul(grad_output.to(at::kDouble), codes * channel_scale.unsqueeze(1));
  const at::Tensor symmetric =
      at::_make_per_channel_quantized_tensor(weight, channel_scale, at::zeros({out_features}, at::kLong), 0);
  for (const auto engine : {at::QEngine::QNNPACK, at::QEngine::ONEDNN}) {
    at::globalContext().setQEngine(engine);
    const auto packed = qlgrad_test::prepack_int8(symmetric);
    check_close(tally, "linear_dynamic_backward, " + c10::toString(engine) + " packing",
                qlgrad::linear_dynamic_backward(grad_output, packed), expected, error_bound(qlgrad::kPrecisions[0]));
  }

  return tally.finish();
}
