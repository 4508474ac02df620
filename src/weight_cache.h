#pragma once
// Stored weights unpacked from packed params, one entry per packed-params object, shared
// by every backward precision.
//
// unpack() of an fbgemm-packed 4096x4096 weight takes longer than 100 forward passes of
// one token, so the unpacked int8 codes (about 1 byte per weight element) are kept. An
// entry holds only a weak reference to its object: it never keeps the layer alive, and it
// is dropped once the object is destroyed (swept on every miss and every inspection).
//
// Under the byte limit, the least recently used entry is the one evicted, but a new
// entry is admitted only when it has been asked for clearly more often than every entry it
// would evict (counts halve as they age). A model whose layers do not all fit is used in a
// cycle, where plain LRU evicts each entry just before it is needed again and nothing
// ever hits; with admission, the entries that fit stay, and the hit rate is the share of
// the model that fits.

#include "backward_math.h"
#include "packed_params.h"

#include <c10/util/FunctionRef.h>

namespace qlgrad::detail {

// The cached weight of `packed`, or unpack(), cached when it fits the limit and is admitted.
// unpack() runs without the lock held, so slow unpacking never blocks other layers.
math::StoredWeight cached_weight(const PackedParams& packed, c10::function_ref<math::StoredWeight()> unpack);

} // namespace qlgrad::detail
