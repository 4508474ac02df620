#pragma once
// Calls of qlgrad's own operators through the dispatcher: the public C++ API makes them, and
// so do the operators' Autograd kernels (below autograd, so that tracers and fake tensors
// see the operator).

#include "packed_params.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace qlgrad::detail {

// The operators take the precision by name (`str? precision=None`); None means the choice in
// effect on the calling thread, else grad_output's dtype's (effective_backward_precision).
using PrecisionName = std::optional<c10::string_view>;

// qlgrad::linear_dynamic_backward for qint8 weights, qlgrad::linear_dynamic_fp16_backward for fp16 ones.
at::Tensor call_packed_backward(WeightKind kind, const at::Tensor& grad_output, const PackedParams& packed,
                                PrecisionName precision);

at::Tensor call_linear_int8_backward(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& zero_point, PrecisionName precision);

at::Tensor call_linear_int4pack_backward(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                                         int64_t group_size, const at::Tensor& scale_and_zeros,
                                         PrecisionName precision);

void call_cache_weight(const PackedParams& packed);

} // namespace qlgrad::detail
