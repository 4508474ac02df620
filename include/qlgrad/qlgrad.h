#pragma once
// qlgrad: input gradients through PyTorch's dynamically quantized int8 linear layers.
//
// Linking libqlgrad registers an Autograd kernel for quantized::linear_dynamic, so
// autograd propagates grad_input = grad_output @ W_deq (straight-through estimator)
// through every dynamically quantized nn.Linear. The functions below expose the same
// backward math without an autograd graph.

#include <ATen/core/Tensor.h>
#include <ATen/native/quantized/PackedParams.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <optional>

#define QLGRAD_API __attribute__((visibility("default")))

namespace qlgrad {

// grad_output [..., N] @ dequantize(W) [N, K] -> [..., K] for the weight inside the
// packed params that quantized::linear_dynamic takes. Uses the weight cache.
// Differentiable with respect to grad_output.
QLGRAD_API at::Tensor linear_dynamic_backward(
    const at::Tensor& grad_output,
    const c10::intrusive_ptr<LinearPackedParamsBase>& packed);

// grad_output [..., N] @ (scale * (weight - zero_point)) -> [..., K] on plain tensors:
// weight int8 [N, K]; scale floating, one element (per tensor) or [N] (per output
// channel); zero_point integer, shaped like scale, absent for a symmetric weight.
// No quantized dtype is involved. Differentiable with respect to grad_output;
// scale and zero_point are constants.
QLGRAD_API at::Tensor linear_int8_backward(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    const at::Tensor& scale,
    const std::optional<at::Tensor>& zero_point = std::nullopt);

// The cache of backward weights, one entry per packed-params object; an entry is
// dropped when its object is destroyed or when the byte limit needs room.
struct CacheInfo {
  int64_t entries;
  int64_t bytes;
  int64_t hits;
  int64_t misses;
  int64_t limit_bytes;
};

QLGRAD_API CacheInfo cache_info();
QLGRAD_API void clear_cache();
// 0 disables caching. Shrinking the limit evicts least recently used entries at once.
QLGRAD_API void set_cache_limit(int64_t bytes);

} // namespace qlgrad
