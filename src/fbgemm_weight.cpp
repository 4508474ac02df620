#include "fbgemm_weight.h"

#include <ATen/ATen.h>

// fbgemm's types are declared by torch's headers only where torch was built with it: x86-64.
// Their includes of asmjit are met by header_shims/.
#if defined(__x86_64__) && __has_include(<fbgemm/Fbgemm.h>)
#define QLGRAD_READS_FBGEMM 1
#define USE_FBGEMM
#include <ATen/native/quantized/cpu/fbgemm_utils.h>
#endif

#include <algorithm>

namespace qlgrad::detail {

#if QLGRAD_READS_FBGEMM
namespace {

using Packing = fbgemm::PackBMatrix<int8_t>;

// The k a run of one n holds: the first k whose address is not k itself (fbgemm keeps its row
// interleave private).
int64_t interleave_of(const Packing& packing) {
  int64_t k = 1;
  while (k < packing.blockRowSize() && packing.addr(static_cast<int32_t>(k), 0) == k) {
    ++k;
  }
  return k;
}

// Whether `layout` addresses W[n, k] where fbgemm does, at the corners of the weight and of its
// first block and at points spread over the rest.
bool matches(const math::BlockedLayout& layout, const Packing& packing) {
  const int64_t n_last = layout.rows - 1, k_last = layout.columns - 1;
  std::vector<std::pair<int64_t, int64_t>> points = {
      {0, 0},
      {n_last, k_last},
      {n_last, 0},
      {0, k_last},
      {std::min(n_last, layout.block_width), std::min(k_last, layout.block_depth + layout.interleave + 1)}};
  constexpr int64_t kSpread = 17;
  for (int64_t i = 1; i < kSpread; ++i) {
    points.emplace_back(n_last * i / kSpread, k_last * (kSpread - i) / kSpread);
  }
  return std::all_of(points.begin(), points.end(), [&](const auto& point) {
    const auto [n, k] = point;
    return layout.offset(n, k) == packing.addr(static_cast<int32_t>(k), static_cast<int32_t>(n));
  });
}

} // namespace

std::optional<math::StoredWeight> fbgemm_weight(const PackedParams& packed) {
  auto* weight = dynamic_cast<PackedLinearWeight*>(packed.get());
  if (weight == nullptr || !weight->w || weight->w->numGroups() != 1) {
    return std::nullopt;
  }
  Packing& packing = *weight->w;
  // fbgemm's B is the weight transposed: K rows of N columns.
  const math::BlockedLayout layout{packing.numCols(), packing.numRows(), packing.blockRowSize(), packing.blockColSize(),
                                   interleave_of(packing)};
  const auto channels = static_cast<int64_t>(weight->w_scale.size());
  if (layout.rows == 0 || layout.columns == 0 || (channels != 1 && channels != layout.rows) ||
      weight->w_zp.size() != weight->w_scale.size() || !matches(layout, packing)) {
    return std::nullopt;
  }
  // The view keeps the packed params alive for as long as a backward holds it.
  auto codes = at::from_blob(
      packing.getBuf(), {layout.size()}, [owner = packed](void*) mutable { owner.reset(); },
      at::TensorOptions().dtype(at::kChar));
  auto scale = at::tensor(weight->w_scale, at::kFloat);
  const bool symmetric = std::all_of(weight->w_zp.begin(), weight->w_zp.end(), [](int32_t zero) { return zero == 0; });
  auto zero_point = symmetric ? std::nullopt : std::optional(at::tensor(weight->w_zp, at::kInt));
  return math::blocked_int8_weight(codes, layout, scale, zero_point);
}

#else

std::optional<math::StoredWeight> fbgemm_weight(const PackedParams&) {
  return std::nullopt;
}

#endif

} // namespace qlgrad::detail
