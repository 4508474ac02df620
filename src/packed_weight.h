#pragma once
// The weight inside LinearPackedParamsBase, in the forms the backward math takes.

#include "backward_math.h"
#include "weight_cache.h"

namespace qlgrad::detail {

// The qint8 weight of `packed` as plain tensors. Refuses, naming what it found,
// any scheme other than qint8 per tensor or per output channel (axis 0).
math::Int8Weight unpack_int8(LinearPackedParamsBase& packed);

// The backward weight of `packed` for `precision`, from the weight cache.
math::PreparedWeight prepared_weight(const PackedParams& packed, Precision precision);

} // namespace qlgrad::detail
