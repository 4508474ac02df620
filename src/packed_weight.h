#pragma once
// The weight inside LinearPackedParamsBase, in the stored form the backward math reads.

#include "backward_math.h"
#include "weight_cache.h"

namespace qlgrad::detail {

// The stored weight of `packed`, from the weight cache. With `kind`, a packed weight of
// another kind is refused, naming what was found; qint8 weights must be quantized per
// tensor or per output channel (axis 0).
math::StoredWeight weight_of_packed(const PackedParams& packed, std::optional<WeightKind> kind);

// The same without the weight cache: fbgemm's packing in place, or the weight unpacked now.
math::StoredWeight uncached_weight(const PackedParams& packed);

// The kind of packed weight a stored weight comes from.
WeightKind kind_of(const math::StoredWeight& weight);

} // namespace qlgrad::detail
