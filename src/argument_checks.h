#pragma once
// The checks of the qlgrad:: operators' arguments. Each refusal names the argument, what it
// expected and what came: c10::TypeError for a wrong kind of argument, c10::ValueError for a
// wrong value.

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::detail {

// What decides where the dispatcher sends a call: a tensor that is missing (None),
// quantized, sparse or on another device than the weight never reaches the value checks.
// It fails inside autograd ("tensor does not have a device"), finds no kernel ("could not
// run ... with arguments from the 'QuantizedCPU' backend") or, on the meta device, reaches
// the shape-only fake implementation, none of which names the argument. The Autograd
// kernels check this before anything else, and the CPU kernels again for callers below
// autograd.
void check_int8_tensors(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero_point);
// The same for the packed backward operators: packed weights live on the CPU.
void check_packed_tensors(const at::Tensor& grad_output);

// The same for qlgrad::_stored_weight_backward: every tensor a plain CPU tensor.
void check_stored_weight_tensors(const at::Tensor& grad_output, const at::Tensor& values, const at::Tensor& description,
                                 const at::Tensor& scale, const at::Tensor& zero_point);

// grad_output is floating, at least 1-D, and its last dimension is out_features.
void check_grad_output(const at::Tensor& grad_output, int64_t out_features);

// Everything about linear_int8_backward's arguments: the tensors as above, then dtypes,
// shapes (scale [1], [N] or [N, G] with K a multiple of G) and values (finite positive
// scales, zero points in the int8 range).
void check_int8_arguments(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point);

// The tensors of linear_int4pack_backward, as check_int8_tensors checks those of linear_int8_backward.
void check_int4pack_tensors(const at::Tensor& grad_output, const at::Tensor& weight_int4pack,
                            const at::Tensor& scale_and_zeros);

// Everything about linear_int4pack_backward's arguments: the tensors as above, then dtypes and
// shapes (weight_int4pack uint8 [N, K / 2], group_size 32, 64, 128 or 256, scale_and_zeros
// floating [K / group_size, N, 2], N a multiple of 16), as aten::_weight_int4pack_mm_for_cpu
// takes them.
void check_int4pack_arguments(const at::Tensor& grad_output, const at::Tensor& weight_int4pack, int64_t group_size,
                              const at::Tensor& scale_and_zeros);

} // namespace qlgrad::detail
