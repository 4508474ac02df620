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

// The cached weight for (packed, precision), or derive(), cached when it fits the limit.
// derive() runs without the lock held, so slow unpacking never blocks other layers.
math::PreparedWeight cached_weight(const PackedParams& packed, Precision precision,
                                   c10::function_ref<math::PreparedWeight()> derive);

} // namespace qlgrad::detail
