#pragma once
// The weight inside LinearPackedParamsBase, in the forms the backward math takes.

#include "backward_math.h"
#include "weight_cache.h"

namespace qlgrad::detail {

// The backward weight of `packed` for `precision`, from the weight cache. With `kind`,
// a packed weight of another kind is refused, naming what was found; qint8 weights must
// be quantized per tensor or per output channel (axis 0).
math::PreparedWeight prepared_weight(const PackedParams& packed, std::optional<WeightKind> kind,
                                     Precision precision);

} // namespace qlgrad::detail
