#include "backward_math.h"

#include "kernels/kernels.h"
#include "matmul.h"
#include "scratch.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

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

// [..., in] viewed as [M, in] (copying only when the strides demand it), and the
// [..., out] shape of a result [M, out].
at::Tensor flatten_leading(const at::Tensor& x) {
  return x.reshape({-1, x.size(-1)});
}

at::Tensor unflatten_leading(const at::Tensor& result, const at::Tensor& like) {
  auto sizes = like.sizes().vec();
  sizes.back() = result.size(-1);
  return result.view(sizes);
}

// The codes [N, K] in rows: the stored tensor, or a copy out of a blocked packing, made for an
// integer GEMM or a float64 product that takes a tensor.
at::Tensor unblocked_codes(const StoredWeight& weight) {
  if (!weight.blocked) {
    return weight.values;
  }
  const auto& layout = *weight.blocked;
  auto codes = at::empty({layout.rows, layout.columns}, weight.values.options());
  at::parallel_for(0, layout.rows, 16, [&](int64_t begin, int64_t end) {
    kernels().copy_blocked(layout, weight.values.const_data_ptr<int8_t>(), begin, end - begin, 0, layout.columns,
                           codes.mutable_data_ptr<int8_t>() + begin * layout.columns, layout.columns);
  });
  return codes;
}

// grad [M, N] quantized per row to symmetric int8 (the weight's scale folded in first,
// because it multiplies the contraction dimension), an integer GEMM with the int8 codes,
// and a per-row rescale.
at::Tensor int8_input_gradient(const at::Tensor& grad_rows, const StoredWeight& weight) {
  const auto grad = as_contiguous(in_dtype(grad_rows, at::kFloat));
  const int64_t m = grad.size(0), n = grad.size(1);
  const auto channel_scale = as_contiguous(weight.scale.expand({n}));
  // The codes' rows spaced as the int8 panel GEMM reads them best where they lie (int8_rows_stride).
  const int64_t stride = int8_rows_stride(n);
  auto quantized = scratch(ScratchUse::kGradientCodes, {m, stride}, at::kChar).narrow(1, 0, n);
  auto row_scale = at::empty({m, 1}, grad.options());
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(n, 1));
  const auto quantize_rows = kernels().quantize_rows;
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    quantize_rows(grad.const_data_ptr<float>(), channel_scale.const_data_ptr<float>(), begin, end, n,
                  quantized.mutable_data_ptr<int8_t>(), stride, row_scale.mutable_data_ptr<float>());
  });
  // sum_n q[m, n] * zero_point[n] (integers in int8's range), exact in float64, taken off the
  // integer sums.
  std::optional<at::Tensor> zero_point_offset;
  if (weight.zero_point) {
    const auto zero_point = weight.zero_point->to(at::kDouble).expand({n});
    zero_point_offset = at::mv(quantized.to(at::kDouble), zero_point).to(at::kInt);
  }
  // The codes where they lie (fbgemm's packing too) in the int8 panel GEMM, else in rows.
  if (auto products =
          int8_codes_matmul(quantized, weight.values, weight.blocked, zero_point_offset, row_scale.view({m}))) {
    return std::move(*products);
  }
  auto sums = at::_int_mm(quantized, unblocked_codes(weight));
  // int32 times float32 gives float32: the rescale is also the conversion, in one pass.
  return at::mul(zero_point_offset ? sums.sub_(zero_point_offset->unsqueeze(1)) : sums, row_scale);
}

// The weight's zero points as the tiled product takes them: one per output channel, or
// [N, G] for group-wise scales.
std::optional<at::Tensor> channel_zero_points(const StoredWeight& weight) {
  if (!weight.zero_point || weight.is_groupwise()) {
    return weight.zero_point;
  }
  return as_contiguous(weight.zero_point->expand({weight.out_features()}));
}

// A scale or zero point in its stored form: float32, contiguous, [N, G] for group-wise
// parameters and flat otherwise (one group per row is per channel, which the kernels handle as such).
at::Tensor stored_parameter(const at::Tensor& parameter) {
  const bool groupwise = parameter.dim() == 2 && parameter.size(1) > 1;
  const auto as_float = in_dtype(parameter, at::kFloat);
  return as_contiguous(groupwise ? as_float : as_float.reshape({-1}));
}

// A zero point in its stored form, or none where every one is 0.
std::optional<at::Tensor> stored_zero_point(const std::optional<at::Tensor>& zero_point) {
  if (!zero_point || all_zero(*zero_point)) {
    return std::nullopt;
  }
  return stored_parameter(*zero_point);
}

} // namespace

bool StoredWeight::is_int8() const {
  return values.scalar_type() == at::kChar;
}

int64_t StoredWeight::nbytes() const {
  int64_t bytes = static_cast<int64_t>(values.nbytes() + scale.nbytes());
  if (zero_point) {
    bytes += static_cast<int64_t>(zero_point->nbytes());
  }
  return bytes;
}

StoredWeight stored_int8_weight(const at::Tensor& values, const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point) {
  const bool rows_contiguous = values.stride(1) == 1 || values.size(1) == 1;
  return {rows_contiguous ? values : values.contiguous(), stored_parameter(scale), stored_zero_point(zero_point)};
}

StoredWeight blocked_int8_weight(const at::Tensor& packed, const BlockedLayout& blocked, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& zero_point) {
  return {packed, stored_parameter(scale), stored_zero_point(zero_point), blocked};
}

StoredWeight unblocked(const StoredWeight& weight) {
  return weight.blocked ? StoredWeight{unblocked_codes(weight), weight.scale, weight.zero_point} : weight;
}

StoredWeight stored_float16_weight(const at::Tensor& weight) {
  return {as_contiguous(in_dtype(weight, at::kHalf)), at::ones({1}, weight.options().dtype(at::kFloat)), std::nullopt};
}

at::Tensor dequantize(const StoredWeight& weight, at::ScalarType dtype) {
  // [N, G, K / G] against parameters [N, G, 1]; per tensor and per channel are G = 1.
  const int64_t n = weight.out_features(), k = weight.in_features();
  const int64_t groups = weight.is_groupwise() ? weight.scale.size(1) : 1;
  const auto per_group = [&](const at::Tensor& parameter) {
    return in_dtype(parameter, dtype).reshape({-1, groups, 1});
  };
  auto result = unblocked_codes(weight).to(dtype).view({n, groups, k / groups});
  if (weight.zero_point) {
    result.sub_(per_group(*weight.zero_point));
  }
  return result.mul_(per_group(weight.scale)).view({n, k});
}

at::Tensor input_gradient(const at::Tensor& grad_output, const StoredWeight& weight, Precision precision) {
  const auto grad = flatten_leading(grad_output);
  const int64_t streams_end = precision == Precision::kBFloat16
                                  ? bfloat16_streamed_rows_end(weight.blocked.has_value(), !weight.is_int8())
                              : precision == Precision::kInt8 ? int8_streamed_rows_end()
                                                              : streamed_rows_end();
  if (grad.size(0) <= streams_end) {
    // A few rows are bound by reading the weight, which the float32 streams do at one byte per
    // code: there the reduced precisions' products would be slower.
    precision = Precision::kFloat32;
  }
  at::Tensor result;
  if (precision == Precision::kInt8 && weight.is_int8() && !weight.is_groupwise()) {
    result = int8_input_gradient(grad, weight);
  } else if (precision == Precision::kBFloat16) {
    // bfloat16 products: a gradient of another dtype is rounded to bfloat16 (times a per-tensor or
    // per-channel scale) once, as the product packs its rows; group-wise scales are taken as the
    // weight is converted.
    const auto lhs = as_contiguous(grad.scalar_type() == at::kBFloat16 ? grad : in_dtype(grad, at::kFloat));
    result = codes_matmul(lhs, weight.values, channel_zero_points(weight), weight.scale, weight.blocked,
                          /*bfloat16_products=*/true);
  } else if (grad.scalar_type() == at::kDouble) {
    // Exact for float64 callers (gradcheck): the weight is converted, not the gradient.
    result = at::mm(grad, dequantize(weight, at::kDouble));
  } else {
    result = codes_matmul(as_contiguous(in_dtype(grad, at::kFloat)), weight.values, channel_zero_points(weight),
                          weight.scale, weight.blocked);
  }
  return unflatten_leading(in_dtype(result, grad_output.scalar_type()), grad_output);
}

at::Tensor input_gradient_adjoint(const at::Tensor& grad, const StoredWeight& weight) {
  return unflatten_leading(at::mm(flatten_leading(grad), dequantize(weight, grad.scalar_type()).t()), grad);
}

Int4PackedWeight int4_packed_weight(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros) {
  return {packed, group_size, as_contiguous(in_dtype(scale_and_zeros, at::kFloat))};
}

at::Tensor input_gradient(const at::Tensor& grad_output, const Int4PackedWeight& weight, Precision precision) {
  const auto grad = flatten_leading(grad_output);
  at::Tensor result;
  if (grad.scalar_type() == at::kDouble) {
    // Exact for float64 callers (gradcheck): the weight is converted, not the gradient.
    result =
        at::mm(grad, int4pack_dequantize(weight.packed, weight.group_size, weight.scale_and_zeros).to(at::kDouble));
  } else {
    // bf16 in bfloat16 products; fp32, and int8 (the weight has no int8 form), in float32 ones.
    const auto dtype = precision == Precision::kBFloat16 ? at::kBFloat16 : at::kFloat;
    result =
        int4pack_matmul(as_contiguous(in_dtype(grad, dtype)), weight.packed, weight.group_size, weight.scale_and_zeros);
  }
  return unflatten_leading(in_dtype(result, grad_output.scalar_type()), grad_output);
}

at::Tensor input_gradient_adjoint(const at::Tensor& grad, const Int4PackedWeight& weight) {
  const auto rows = flatten_leading(grad);
  at::Tensor result;
  if (rows.scalar_type() == at::kDouble) {
    result =
        at::mm(rows, int4pack_dequantize(weight.packed, weight.group_size, weight.scale_and_zeros).to(at::kDouble).t());
  } else {
    // The op takes its parameters in its activation's dtype.
    result = at::_weight_int4pack_mm_for_cpu(as_contiguous(rows), weight.packed, weight.group_size,
                                             in_dtype(weight.scale_and_zeros, rows.scalar_type()));
  }
  return unflatten_leading(result, grad);
}

} // namespace qlgrad::math
