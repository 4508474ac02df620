#pragma once
// The weight inside LinearPackedParamsBase, in the stored form the backward math reads.

#include "backward_math.h"
#include "weight_cache.h"

namespace qlgrad::detail {

// The stored weight of `packed`, from the weight cache. With `kind`, a packed weight of
// another kind is refused, naming what was found; qint8 weights must be quantized per
// tensor or per output channel (axis 0).
math::StoredWeight stored_weight(const PackedParams& packed, std::optional<WeightKind> kind);

} // namespace qlgrad::detail
