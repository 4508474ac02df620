#pragma once
// The row quantizers (QuantizeRowsFn, QuantizeRowsSymmetricFn, QuantDequantRowsFn) as plain loops
// that the compiler vectorizes: row_quantization_portable.cpp, row_quantization_avx2.cpp and
// row_quantization_avx512.cpp compile them for their instruction sets, because these loops are
// what stands between the gradient (or the activation) and the integer GEMM; the AVX-512 file
// passes the activation quantizers loops of its own. Their counts of values that are not finite
// are int32, which vectorize in the float lanes' width (int64 ones halve it: 1.28x the time for
// 256 x 4864 bfloat16 activations on AVX-512).

#include "kernels.h"

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace qlgrad::math {

// Rows whose largest |grad * channel_scale| lies below this are quantized in double:
// in float, 127 / max would overflow near 3.7e-37 and the products lose their digits
// to underflow some decades before.
constexpr float kTinyRowMax = 0x1p-100f;

// max_n |row[n] * channel_scale[n]|, NaN when any product is NaN. The NaNs are counted
// apart so that both reductions vectorize (a NaN-propagating maximum does not).
template <typename Real>
[[gnu::always_inline]] inline Real row_max_abs(const float* row, const float* channel_scale, int64_t n) {
  Real max_abs = 0;
  int32_t nans = 0;
#pragma omp simd reduction(max : max_abs) reduction(+ : nans)
  for (int64_t j = 0; j < n; ++j) {
    const Real value = std::fabs(Real(row[j]) * Real(channel_scale[j]));
    max_abs = value > max_abs ? value : max_abs;
    nans += value != value;
  }
  return nans > 0 ? std::numeric_limits<Real>::quiet_NaN() : max_abs;
}

template <typename Real>
[[gnu::always_inline]] inline void round_row(const float* row, const float* channel_scale, int64_t n,
                                             Real inverse_scale, int8_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    const Real value = Real(row[j]) * Real(channel_scale[j]) * inverse_scale;
    out[j] = static_cast<int8_t>(static_cast<int32_t>(value + std::copysign(Real(0.5), value)));
  }
}

// The row quantizer of kernels.h: one pass over each row (in cache) for the maximum and one to round.
[[gnu::always_inline]] inline void quantize_rows(const float* grad, const float* channel_scale, int64_t begin,
                                                 int64_t end, int64_t n, int8_t* quantized, int64_t ldq,
                                                 float* row_scale) {
  for (int64_t m = begin; m < end; ++m) {
    const float* row = grad + m * n;
    int8_t* out = quantized + m * ldq;
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

// A float32 result as a tensor of Element's dtype holds it: rounded to nearest even for bfloat16
// (c10::BFloat16's rounding, its NaN too), without branches, so that the loops vectorize.
// With Finite, for values known not to be NaN: the same, in fewer instructions.
template <typename Element, bool Finite = false>
[[gnu::always_inline]] inline float in_dtype_of(float value) {
  if constexpr (std::is_same_v<Element, at::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    const uint32_t rounded_bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
    bits = Finite || value == value ? rounded_bits : 0x7FC00000u;
    float rounded;
    std::memcpy(&rounded, &bits, sizeof(rounded));
    return rounded;
  }
  return value;
}

// A float that holds an integer in the int8 range, or a NaN, as the int8 code it converts to
// (0 for a NaN, as x86 CPUs convert it), held as a float.
[[gnu::always_inline]] inline float int8_code(float value) {
  return value == value ? value : 0.0f;
}

// A float32 value as Element holds it (in_dtype_of's rounding).
template <typename Element, bool Finite = false>
[[gnu::always_inline]] inline Element to_element(float value) {
  if constexpr (std::is_same_v<Element, at::BFloat16>) {
    const float rounded = in_dtype_of<Element, Finite>(value);
    uint32_t bits;
    std::memcpy(&bits, &rounded, sizeof(bits));
    return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
  } else {
    return value;
  }
}

// torch.clamp's: NaN stays NaN.
[[gnu::always_inline]] inline float clamped(float value, float low, float high) {
  return value == value ? std::clamp(value, low, high) : value;
}

// A row's extremes with 0 (min(min_j x, 0) and max(max_j x, 0), NaNs left out), and whether it
// holds values that are not finite and NaNs (counts, or any nonzero number when it does).
struct RowExtremes {
  float low = 0, high = 0;
  int32_t non_finite = 0, nans = 0;
};

// The loops over a row's values, as plain loops the compiler vectorizes for the file's instruction
// set. A kernel file may pass its own (the same results, bit for bit) to the row quantizers below.
struct PlainRowLoops {
  template <typename Element>
  static RowExtremes extremes(const Element* row, int64_t n) {
    // The values that are not finite counted apart, so that the reductions vectorize.
    float low = 0, high = 0;
    int32_t non_finite = 0, nans = 0;
#pragma omp simd reduction(min : low) reduction(max : high) reduction(+ : non_finite, nans)
    for (int64_t j = 0; j < n; ++j) {
      const float value = static_cast<float>(row[j]);
      low = value < low ? value : low;
      high = value > high ? value : high;
      non_finite += !(std::fabs(value) <= std::numeric_limits<float>::max());
      nans += value != value;
    }
    return {low, high, non_finite, nans};
  }

  // out[j] = clamp(round_half_even(row[j] * inverse), -128, 127) for a finite row.
  template <typename Element>
  static void round_symmetric(const Element* row, int64_t n, float inverse, int8_t* out) {
    for (int64_t j = 0; j < n; ++j) {
      const float rounded = std::nearbyint(static_cast<float>(row[j]) * inverse);
      out[j] = static_cast<int8_t>(std::clamp(rounded, -128.0f, 127.0f));
    }
  }

  // torchao's quantization and dequantization of a row whose steps meet no NaN (finite extremes
  // and scale): the steps of quant_dequant_row below, less two of its roundings that change
  // nothing here. rounded + zero_code is an integer of magnitude below 2^9 (|value * inverse| <=
  // 255, zero_code in [-128, 127]): exact in bfloat16 up to 256, and beyond it rounded to an integer
  // of at least 256 that the clamp takes to the same bound. code - zero_code is an integer of
  // magnitude at most 255: exact.
  template <typename Element>
  static void quant_dequant_finite(const Element* row, int64_t n, float inverse, float zero_code, float scale,
                                   Element* out) {
    for (int64_t j = 0; j < n; ++j) {
      const float rounded = std::nearbyint(in_dtype_of<Element, true>(static_cast<float>(row[j]) * inverse));
      const float code = std::min(std::max(rounded + zero_code, -128.0f), 127.0f);
      out[j] = to_element<Element, true>((code - zero_code) * scale);
    }
  }
};

// The symmetric activation quantizer of kernels.h: one pass over each row (in cache) for its
// extremes and one to round.
template <typename Loops = PlainRowLoops, typename Element>
[[gnu::always_inline]] inline void quantize_rows_symmetric(const Element* input, int64_t begin, int64_t end, int64_t n,
                                                           int8_t* quantized, float* row_scale) {
  // torch.clamp converts its bound to the tensor's dtype.
  const float eps = in_dtype_of<Element>(std::numeric_limits<float>::epsilon());
  for (int64_t m = begin; m < end; ++m) {
    const Element* row = input + m * n;
    const RowExtremes extremes = Loops::extremes(row, n);
    int8_t* out = quantized + m * n;
    if (extremes.non_finite > 0) {
      // torch's steps make the scale NaN (or an infinity), every value times its inverse NaN (or
      // zero), and x86 CPUs convert a NaN to the int8 code 0.
      row_scale[m] =
          extremes.nans > 0 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
      std::fill(out, out + n, int8_t{0});
      continue;
    }
    const float scale = std::max(in_dtype_of<Element>(std::max(-extremes.low, extremes.high) / 127.5f), eps);
    row_scale[m] = scale;
    Loops::round_symmetric(row, n, 1.0f / scale, out);
  }
}

// Row `row`'s values quantized and dequantized as torchao's steps do (each rounded to Element),
// with its inverse scale, zero point (as its int8 code) and scale, NaNs flowing through.
template <typename Element>
[[gnu::always_inline]] inline void quant_dequant_row(const Element* row, int64_t n, float inverse, float zero_code,
                                                     float scale, Element* out) {
  const auto step = [](float value) { return in_dtype_of<Element>(value); };
  for (int64_t j = 0; j < n; ++j) {
    const float rounded = std::nearbyint(step(static_cast<float>(row[j]) * inverse));
    const float code = int8_code(clamped(step(rounded + zero_code), -128.0f, 127.0f));
    out[j] = to_element<Element>(step(code - zero_code) * scale);
  }
}

// torchao's asymmetric quantization parameters of a row with these extremes, every step in
// Element's dtype: its scale, zero point (as its int8 code) and inverse scale, and whether the
// extremes and the scale are finite (low <= 0 <= high, so that high - low bounds every |value|
// and every step stays finite: |value * inverse| <= 255).
struct AsymmetricRow {
  float scale, zero_code, inverse;
  bool finite;
};

template <typename Element>
[[gnu::always_inline]] inline AsymmetricRow asymmetric_row(const RowExtremes& extremes) {
  const auto step = [](float value) { return in_dtype_of<Element>(value); };
  const float eps = step(std::numeric_limits<float>::min());
  // torch.amin and amax propagate a NaN, and the steps below carry it on.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float low = extremes.nans > 0 ? nan : extremes.low, high = extremes.nans > 0 ? nan : extremes.high;
  float scale = step(step(high - low) / 255.0f);
  scale = scale == scale ? std::max(scale, eps) : scale;
  const float zero_point = clamped(step(-128.0f - std::nearbyint(step(low / scale))), -128.0f, 127.0f);
  return {scale, int8_code(zero_point), step(1.0f / scale),
          std::isfinite(low) && std::isfinite(high) && std::isfinite(scale)};
}

// The asymmetric activation quantizer and dequantizer of kernels.h: one pass over each row for
// its extremes and one to quantize and dequantize.
template <typename Loops = PlainRowLoops, typename Element>
[[gnu::always_inline]] inline void quant_dequant_rows_asymmetric(const Element* input, int64_t begin, int64_t end,
                                                                 int64_t n, Element* out) {
  for (int64_t m = begin; m < end; ++m) {
    const Element* row = input + m * n;
    const AsymmetricRow parameters = asymmetric_row<Element>(Loops::extremes(row, n));
    if (parameters.finite) {
      Loops::quant_dequant_finite(row, n, parameters.inverse, parameters.zero_code, parameters.scale, out + m * n);
    } else {
      quant_dequant_row(row, n, parameters.inverse, parameters.zero_code, parameters.scale, out + m * n);
    }
  }
}

// The asymmetric activation quantizer of kernels.h (QuantizeRowsAsymmetricFn), the same steps
// without the dequantization.
template <typename Loops, typename Element>
[[gnu::always_inline]] inline void quantize_rows_asymmetric(const Element* input, int64_t begin, int64_t end, int64_t n,
                                                            uint8_t* codes, float* row_scale, float* row_offset) {
  for (int64_t m = begin; m < end; ++m) {
    const Element* row = input + m * n;
    const AsymmetricRow parameters = asymmetric_row<Element>(Loops::extremes(row, n));
    row_scale[m] = parameters.finite ? parameters.scale : std::numeric_limits<float>::quiet_NaN();
    row_offset[m] = parameters.zero_code + 128.0f;
    if (parameters.finite) {
      Loops::quantize_finite(row, n, parameters.inverse, parameters.zero_code, codes + m * n);
    }
  }
}

} // namespace qlgrad::math
