#include "backward_math.h"

#include <ATen/ATen.h>

namespace qlgrad::math {
namespace {

// A per-tensor or per-channel parameter as a column that broadcasts over K.
at::Tensor as_column(const at::Tensor& parameter, at::ScalarType dtype) {
  return parameter.to(dtype).reshape({-1, 1});
}

// [..., in] -> [M, in] @ weight -> [..., out], without copying a contiguous input.
at::Tensor matmul_last_dim(const at::Tensor& x, const at::Tensor& weight) {
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(1);
  return at::mm(x.reshape({-1, x.size(-1)}), weight).view(sizes);
}

} // namespace

at::Tensor dequantize(const Int8Weight& weight, at::ScalarType dtype) {
  auto result = weight.values.to(dtype);
  if (weight.zero_point) {
    result.sub_(as_column(*weight.zero_point, dtype));
  }
  return result.mul_(as_column(weight.scale, dtype));
}

at::Tensor input_gradient(const at::Tensor& grad_output, const at::Tensor& weight) {
  return matmul_last_dim(grad_output, weight);
}

at::Tensor input_gradient_adjoint(const at::Tensor& grad, const at::Tensor& weight) {
  return matmul_last_dim(grad, weight.t());
}

} // namespace qlgrad::math
