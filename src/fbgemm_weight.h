#pragma once
// The int8 weight of packed params that fbgemm packed (the x86 and fbgemm engines), read in place.

#include "backward_math.h"
#include "packed_params.h"

#include <optional>

namespace qlgrad::detail {

// The weight of `packed` as a view of fbgemm's own packing, holding a reference to `packed`;
// nothing when another engine packed it, or when the packing is not the layout qlgrad reads
// (checked against fbgemm's own addressing).
std::optional<math::StoredWeight> fbgemm_weight(const PackedParams& packed);

} // namespace qlgrad::detail
