#pragma once
// Backward weights derived from packed params, one entry per packed-params object and
// precision.
//
// unpack() of an fbgemm-packed 4096x4096 weight takes longer than 100 forward passes
// of one token, so the derived weight is kept. An entry holds only a weak reference
// to its object: it never keeps the layer alive, and it is dropped once the object
// is destroyed (swept on every miss and every inspection) or when the byte limit
// needs room (least recently used first).

#include "backward_math.h"

#include <c10/util/FunctionRef.h>

namespace qlgrad::detail {

using PackedParams = c10::intrusive_ptr<LinearPackedParamsBase>;

// What the quantized:: ops of the dynamic linear family pack: qint8 weights
// (linear_dynamic, linear_relu_dynamic) or float16 ones (the *_fp16 ops).
enum class WeightKind { kQInt8, kFloat16 };

// A backward weight and the kind of packed weight it came from, so that a cache hit
// can be checked against the op asking for it just as a miss is.
struct CachedWeight {
  WeightKind kind;
  math::PreparedWeight weight;
};

// The cached weight for (packed, precision), or derive(), cached when it fits the limit.
// derive() runs without the lock held, so slow unpacking never blocks other layers.
CachedWeight cached_weight(const PackedParams& packed, Precision precision,
                           c10::function_ref<CachedWeight()> derive);

} // namespace qlgrad::detail
