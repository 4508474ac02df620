#include "backward_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace qlgrad::math {
namespace {

// Tensor::to(dtype) and Tensor::contiguous() return their own argument when nothing
// changes: an alias that checks of operators below autograd (torch.library.opcheck)
// reject, so no-op conversions are not dispatched at all.
at::Tensor in_dtype(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.scalar_type() == dtype ? tensor : tensor.to(dtype);
}

at::Tensor as_contiguous(const at::Tensor& tensor) {
  return tensor.is_contiguous() ? tensor : tensor.contiguous();
}

// A per-tensor or per-channel parameter as a column that broadcasts over K.
at::Tensor as_column(const at::Tensor& parameter, at::ScalarType dtype) {
  return in_dtype(parameter, dtype).reshape({-1, 1});
}

// [..., in] viewed as [M, in] (copying only when the strides demand it), and the
// [..., out] shape of a result [M, out].
at::Tensor rows_of(const at::Tensor& x) {
  return x.reshape({-1, x.size(-1)});
}

at::Tensor unflatten_rows(const at::Tensor& result, const at::Tensor& like) {
  auto sizes = like.sizes().vec();
  sizes.back() = result.size(-1);
  return result.view(sizes);
}

// Rows whose largest |grad * channel_scale| lies below this are quantized in double:
// in float, 127 / max would overflow near 3.7e-37 and the products lose their digits
// to underflow some decades before.
constexpr float kTinyRowMax = 0x1p-100f;

// max_n |row[n] * channel_scale[n]|, NaN when any product is NaN. The NaNs are counted
// apart so that both reductions vectorize (a NaN-propagating maximum does not).
template <typename Real>
[[gnu::always_inline]] inline Real row_max_abs(const float* row, const float* channel_scale, int64_t n) {
  Real max_abs = 0;
  int64_t nans = 0;
#pragma omp simd reduction(max : max_abs) reduction(+ : nans)
  for (int64_t j = 0; j < n; ++j) {
    const Real value = std::fabs(Real(row[j]) * Real(channel_scale[j]));
    max_abs = value > max_abs ? value : max_abs;
    nans += value != value;
  }
  return nans > 0 ? std::numeric_limits<Real>::quiet_NaN() : max_abs;
}

template <typename Real>
[[gnu::always_inline]] inline void round_row(const float* row, const float* channel_scale, int64_t n, Real inverse_scale, int8_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    const Real value = Real(row[j]) * Real(channel_scale[j]) * inverse_scale;
    out[j] = static_cast<int8_t>(static_cast<int32_t>(value + std::copysign(Real(0.5), value)));
  }
}

// q[m, :] = round(grad[m, :] * channel_scale / s[m]) with s[m] = max_n |grad[m, n] *
// channel_scale[n]| / 127: symmetric int8 per row, the channel scale folded in first
// because it multiplies the contraction dimension. One pass over each row (in cache)
// for the maximum and one to round; cloned for AVX2 because this loop is what stands
// between the gradient and the integer GEMM.
__attribute__((target_clones("avx2", "default"))) void quantize_rows(
    const float* grad, const float* channel_scale, int64_t begin, int64_t end, int64_t n,
    int8_t* quantized, float* row_scale) {
  for (int64_t m = begin; m < end; ++m) {
    const float* row = grad + m * n;
    int8_t* out = quantized + m * n;
    const float max_abs = row_max_abs<float>(row, channel_scale, n);
    if (!std::isfinite(max_abs)) {
      // No int8 code stands for NaN or Inf: the row's result becomes NaN instead.
      std::fill(out, out + n, int8_t{0});
      row_scale[m] = std::numeric_limits<float>::quiet_NaN();
    } else if (max_abs >= kTinyRowMax) {
      round_row<float>(row, channel_scale, n, 127.0f / max_abs, out);
      row_scale[m] = max_abs / 127.0f;
    } else {
      const double tiny_max_abs = row_max_abs<double>(row, channel_scale, n);
      round_row<double>(row, channel_scale, n, tiny_max_abs > 0 ? 127.0 / tiny_max_abs : 0.0, out);
      row_scale[m] = static_cast<float>(tiny_max_abs / 127.0);
    }
  }
}

at::Tensor int8_input_gradient(const at::Tensor& grad_rows, const PreparedWeight& weight) {
  const auto grad = as_contiguous(in_dtype(grad_rows, at::kFloat));
  const int64_t m = grad.size(0), n = grad.size(1);
  auto quantized = at::empty({m, n}, grad.options().dtype(at::kChar));
  auto row_scale = at::empty({m, 1}, grad.options());
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(n, 1));
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    quantize_rows(grad.const_data_ptr<float>(), weight.channel_scale.const_data_ptr<float>(), begin, end,
                  n, quantized.mutable_data_ptr<int8_t>(), row_scale.mutable_data_ptr<float>());
  });
  // int32 times float32 gives float32: the rescale is also the conversion, in one pass.
  auto result = at::mul(at::_int_mm(quantized, weight.weight), row_scale);
  if (weight.zero_point) {
    // sum_n q[m, n] * zero_point[n], exact in float64, taken off every column.
    const auto offset = at::mv(quantized.to(at::kDouble), *weight.zero_point).to(at::kFloat).unsqueeze(1);
    result.sub_(offset.mul_(row_scale));
  }
  return result;
}

} // namespace

at::Tensor dequantize(const Int8Weight& weight, at::ScalarType dtype) {
  auto result = weight.values.to(dtype);
  if (weight.zero_point) {
    result.sub_(as_column(*weight.zero_point, dtype));
  }
  return result.mul_(as_column(weight.scale, dtype));
}

int64_t PreparedWeight::nbytes() const {
  int64_t bytes = static_cast<int64_t>(weight.nbytes());
  if (channel_scale.defined()) {
    bytes += static_cast<int64_t>(channel_scale.nbytes());
  }
  if (zero_point) {
    bytes += static_cast<int64_t>(zero_point->nbytes());
  }
  return bytes;
}

PreparedWeight prepare(const Int8Weight& weight, Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return {precision, dequantize(weight, at::kFloat), {}, std::nullopt};
    case Precision::kBFloat16:
      return {precision, dequantize(weight, at::kFloat).to(at::kBFloat16), {}, std::nullopt};
    case Precision::kInt8: {
      const int64_t out_features = weight.values.size(0);
      auto zero_point = weight.zero_point && weight.zero_point->ne(0).any().item<bool>()
                            ? std::optional<at::Tensor>(weight.zero_point->to(at::kDouble).expand({out_features}).contiguous())
                            : std::nullopt;
      return {precision, as_contiguous(weight.values),
              as_contiguous(in_dtype(weight.scale, at::kFloat).expand({out_features})), std::move(zero_point)};
    }
  }
  TORCH_CHECK(false, "qlgrad: invalid Precision value ", static_cast<int>(precision));
}

PreparedWeight prepare_float(const at::Tensor& weight, Precision precision) {
  if (precision == Precision::kBFloat16) {
    return {precision, weight.to(at::kBFloat16), {}, std::nullopt};
  }
  return {Precision::kFloat32, as_contiguous(in_dtype(weight, at::kFloat)), {}, std::nullopt};
}

at::Tensor input_gradient(const at::Tensor& grad_output, const PreparedWeight& weight) {
  const auto grad = rows_of(grad_output);
  at::Tensor result;
  switch (weight.precision) {
    case Precision::kFloat32:
      result = at::mm(grad, in_dtype(weight.weight, grad.scalar_type()));
      break;
    case Precision::kBFloat16:
      result = at::mm(in_dtype(grad, at::kBFloat16), weight.weight);
      break;
    case Precision::kInt8:
      result = int8_input_gradient(grad, weight);
      break;
  }
  return unflatten_rows(in_dtype(result, grad_output.scalar_type()), grad_output);
}

at::Tensor input_gradient_adjoint(const at::Tensor& grad, const at::Tensor& dequantized_weight) {
  return unflatten_rows(at::mm(rows_of(grad), in_dtype(dequantized_weight, grad.scalar_type()).t()), grad);
}

} // namespace qlgrad::math
