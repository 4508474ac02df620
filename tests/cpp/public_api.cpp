// The public C++ API used directly, without TorchScript: the packed and the plain-int8
// backward against a float64 reference, double backward through the plain one, the backward
// precision that follows the gradient's dtype where none is chosen, torch's int4 packing in
// bfloat16 products, whose kernels look its values up in tables, and the group-wise layers'
// training forwards in bfloat16 and with int8 activations (run here under the sanitizers).

#include "testing.h"

#include <qlgrad/qlgrad.h>

#include <torch/autograd.h>

namespace {

bool close(const at::Tensor& got, const at::Tensor& expected) {
  return got.sizes() == expected.sizes() && at::allclose(got.to(at::kDouble), expected.to(at::kDouble), 1e-5, 1e-6);
}

// Within bfloat16 products' error of a float64 reference: 1% of its norm.
bool close_in_bfloat16(const at::Tensor& got, const at::Tensor& expected) {
  const at::Tensor error = (got.to(at::kDouble) - expected).norm();
  return got.sizes() == expected.sizes() && error.item<double>() <= 1e-2 * expected.norm().item<double>();
}

// torch's int4 packing of 2112 x 128 codes in groups of 32 (33 whole blocks of 64 rows in the
// AVX-512 packing, at least 2048 outputs for the training forward's weight-row tiles): the
// backward of a bfloat16 gradient and the training forward of a bfloat16 input against float64.
void check_int4_packing_in_bfloat16(qlgrad_test::Tally& tally) {
  const int64_t out_features = 2112, in_features = 128, group_size = 32;
  const at::Tensor codes = at::randint(0, 16, {out_features, in_features}, at::kInt);
  const at::Tensor packed = at::_convert_weight_to_int4pack_for_cpu(codes, 1);
  const at::Tensor scales = at::rand({in_features / group_size, out_features}) * 0.02 + 1e-3;
  const at::Tensor zeros = at::randn({in_features / group_size, out_features}) * 0.01;
  // bfloat16 parameters (what a bfloat16 input takes), exact in float32 and float64.
  const at::Tensor scale_and_zeros = at::stack({scales, zeros}, -1).to(at::kBFloat16);
  const at::Tensor group =
      at::arange(in_features / group_size, at::TensorOptions(at::kLong)).repeat_interleave(group_size);
  const at::Tensor parameters = scale_and_zeros.to(at::kDouble).index_select(0, group);  // [K, N, 2]
  const at::Tensor weight =
      (codes.to(at::kDouble) - 8) * parameters.select(2, 0).t() + parameters.select(2, 1).t();  // [N, K]
  const at::Tensor grad_output = at::randn({8, out_features}).to(at::kBFloat16);
  tally.check("int4 packing, bfloat16 backward",
              close_in_bfloat16(qlgrad::linear_int4pack_backward(grad_output, packed, group_size, scale_and_zeros),
                                at::matmul(grad_output.to(at::kDouble), weight)));
  const at::Tensor input = at::randn({16, in_features}).to(at::kBFloat16).requires_grad_(true);
  const at::Tensor output = at::_weight_int4pack_mm_for_cpu(input, packed, group_size, scale_and_zeros);
  tally.check("int4 packing, bfloat16 training forward",
              close_in_bfloat16(output, at::matmul(input.detach().to(at::kDouble), weight.t())));
}

// The group-wise layers' bfloat16 training forward (torch.ops.qlgrad._int8_groupwise_linear) of
// 160 rows by 530 x 1040 int8 codes in groups of 16 with zero points against float64: with
// AVX512-BF16 and without AMX, the weight's rows as the panel kernel's first operand (several
// blocks of its rows, a partial last one, two parts of the depth and a depth short of 32).
void check_groupwise_forward_in_bfloat16(qlgrad_test::Tally& tally) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("qlgrad::_int8_groupwise_linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  const int64_t rows = 160, out_features = 530, in_features = 1040, groups = 65;
  const at::Tensor codes = at::randint(-128, 128, {out_features, in_features}, at::kChar);
  const at::Tensor scale = at::rand({out_features, groups}) * 0.01 + 1e-3;
  const at::Tensor zero_point = at::randint(-3, 4, {out_features, groups}).to(at::kFloat);
  const at::Tensor weight = ((codes.to(at::kDouble).view({out_features, groups, -1}) - zero_point.unsqueeze(2)) *
                             scale.to(at::kDouble).unsqueeze(2))
                                .view({out_features, in_features});
  const at::Tensor input = at::randn({rows, in_features}).to(at::kBFloat16);
  tally.check(
      "group-wise int8, bfloat16 training forward",
      close_in_bfloat16(op.call(input, codes, scale, zero_point), at::matmul(input.to(at::kDouble), weight.t())));
}

// The group-wise layers' training forward with int8 activations
// (torch.ops.qlgrad._int8_dynamic_groupwise_linear; in integer products with AVX512-VNNI) of 37
// float32 rows by 300 x 2048 int8 codes in groups of 32 with zero points (two blocks of depth, a
// partial last panel) against float64 from the activation that torchao's quantization gives.
void check_dynamic_groupwise_forward(qlgrad_test::Tally& tally) {
  auto& dispatcher = c10::Dispatcher::singleton();
  static const auto op =
      dispatcher.findSchemaOrThrow("qlgrad::_int8_dynamic_groupwise_linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  static const auto quant_dequant =
      dispatcher.findSchemaOrThrow("qlgrad::_int8_quant_dequant_rows", "").typed<at::Tensor(const at::Tensor&)>();
  const int64_t rows = 37, out_features = 300, in_features = 2048, groups = 64;
  const at::Tensor codes = at::randint(-8, 8, {out_features, in_features}, at::kChar);
  const at::Tensor scale = at::rand({out_features, groups}) * 0.01 + 1e-3;
  const at::Tensor zero_point = at::randint(-8, 8, {out_features, groups}, at::kChar);
  const at::Tensor weight = ((codes.to(at::kDouble).view({out_features, groups, -1}) - zero_point.unsqueeze(2)) *
                             scale.to(at::kDouble).unsqueeze(2))
                                .view({out_features, in_features});
  const at::Tensor input = at::randn({rows, in_features}) + 0.5;
  const at::Tensor expected = at::matmul(quant_dequant.call(input).to(at::kDouble), weight.t());
  const at::Tensor error = (op.call(input, codes, scale, zero_point).to(at::kDouble) - expected).norm();
  tally.check("group-wise int8, training forward with int8 activations",
              error.item<double>() <= 1e-6 * expected.norm().item<double>());
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

  if (std::string(qlgrad::cpu_capability()) == "avx512") {  // the packing the kernels read
    check_int4_packing_in_bfloat16(tally);
    check_groupwise_forward_in_bfloat16(tally);
    check_dynamic_groupwise_forward(tally);
  }
  return tally.finish();
}
