#include "weight_readers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace qlgrad::math {
namespace {

// A tile's or a panel's rows are copied out of a blocked packing and converted this many at a
// time, so that the copied codes stay in L1 (bfloat16 tiles and shared panels have a depth of
// 1024 and more).
constexpr int64_t kCopiedSlabRows = 64;

void convert_codes(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top, int64_t first,
                   int64_t depth, int64_t count, at::Tensor& tile, int64_t tile_row) {
  if (tile.scalar_type() == at::kFloat) {
    kernels().convert_codes_float(codes, ldw, parameters, top, first, depth, count,
                                  tile.mutable_data_ptr<float>() + tile_row * count);
  } else {
    kernels().convert_codes_bfloat16(codes, ldw, parameters, top, first, depth, count,
                                     tile.mutable_data_ptr<at::BFloat16>() + tile_row * count);
  }
}

// W[top:top + depth, first:first + count] of a blocked packing copied into rows in the thread's
// scratch, kCopiedSlabRows rows at a time: each(codes, row stride, first row, rows) for each slab.
template <typename Each>
void for_each_copied_slab(const int8_t* packed, const BlockedLayout& layout, int64_t top, int64_t first, int64_t depth,
                          int64_t count, const Each& each) {
  const int64_t ldc = copied_row_stride(count);
  int8_t* codes = scratch_codes(std::min(depth, kCopiedSlabRows) * ldc);
  for (int64_t slab = 0; slab < depth; slab += kCopiedSlabRows) {
    const int64_t height = std::min(kCopiedSlabRows, depth - slab);
    kernels().copy_blocked(layout, packed, top + slab, height, first, count, codes, ldc);
    each(codes, ldc, slab, height);
  }
}

// each(row, column, i, W[top + row + i, first + column]) for W[top:top + depth, first:first + count]
// of an int4 packing, 16 rows of a column at a time (top a multiple of 16), on any CPU.
template <typename Each>
void for_each_values16(const Int4Pack& pack, int64_t top, int64_t depth, int64_t first, int64_t count,
                       const Each& each) {
  float values[16];
  for (int64_t row = 0; row < depth; row += 16) {
    const auto where = pack.rows16(top + row);
    for (int64_t column = 0; column < count; ++column) {
      pack.values16(where, top + row, first + column, values);
      for (int64_t i = 0; i < std::min<int64_t>(16, depth - row); ++i) {
        each(row, column, i, values[i]);
      }
    }
  }
}

} // namespace

void WeightReader::panels(int64_t, int64_t, int64_t, int64_t, int64_t, float*) const {
  TORCH_INTERNAL_ASSERT(false, "qlgrad: this weight has no float32 panels");
}

void WeightReader::panels(int64_t, int64_t, int64_t, int64_t, int64_t, at::BFloat16*) const {
  TORCH_INTERNAL_ASSERT(false, "qlgrad: this weight has no bfloat16 panels");
}

void WeightReader::panels(int64_t, int64_t, int64_t, int64_t, int64_t, uint8_t*) const {
  TORCH_INTERNAL_ASSERT(false, "qlgrad: this weight has no int8 panels");
}

void WeightReader::tile(int64_t, int64_t, int64_t, at::Tensor&) const {
  TORCH_INTERNAL_ASSERT(false, "qlgrad: this weight has no tiles");
}

int64_t copied_row_stride(int64_t columns) {
  return (columns + kCacheLine - 1) / kCacheLine * kCacheLine + kCacheLine;
}

int8_t* scratch_codes(int64_t bytes) {
  thread_local std::vector<int8_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < bytes) {
    scratch.resize(bytes);
  }
  return scratch.data();
}

void RowCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const {
  const int64_t ldw = weight_.stride(0);
  if (weight_.scalar_type() == at::kChar) {
    kernels().convert_panels_int8(weight_.const_data_ptr<int8_t>() + top * ldw + first, ldw, parameters_, top, first,
                                  depth, count, out, panel_depth);
  } else {
    kernels().convert_panels_float16(weight_.const_data_ptr<at::Half>() + top * ldw + first, ldw, parameters_, top,
                                     first, depth, count, out, panel_depth);
  }
}

void RowCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                      at::BFloat16* out) const {
  const int64_t ldw = weight_.stride(0);
  if (weight_.scalar_type() == at::kChar) {
    kernels().convert_panels_int8_bfloat16(weight_.const_data_ptr<int8_t>() + top * ldw + first, ldw, parameters_, top,
                                           first, depth, count, out, panel_depth);
  } else {
    kernels().convert_panels_float16_bfloat16(weight_.const_data_ptr<at::Half>() + top * ldw + first, ldw, parameters_,
                                              top, first, depth, count, out, panel_depth);
  }
}

void RowCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                      uint8_t* out) const {
  TORCH_INTERNAL_ASSERT(weight_.scalar_type() == at::kChar && parameters_.scale == nullptr &&
                        parameters_.zero_point == nullptr);
  const int64_t ldw = weight_.stride(0);
  kernels().int8_panels(weight_.const_data_ptr<int8_t>() + top * ldw + first, ldw, depth, count, out, panel_depth);
}

void RowCodes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  const int64_t depth = tile.size(0);
  if (weight_.scalar_type() != at::kChar) {
    // float16 weights (fp16-packed layers): rare enough for ATen's conversion.
    tile.copy_(weight_.narrow(0, top, depth).narrow(1, first, count));
    return;
  }
  const int64_t ldw = weight_.stride(0);
  convert_codes(weight_.const_data_ptr<int8_t>() + top * ldw + first, ldw, parameters_, top, first, depth, count, tile,
                0);
}

void BlockedCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                          float* out) const {
  if (kernels().blocked_float_panels != nullptr && layout_.in_squares() && top % 16 == 0 && first % 16 == 0 &&
      parameters_.scale == nullptr) {
    kernels().blocked_float_panels(layout_, packed_, parameters_.zero_point, top, depth, first, count, out,
                                   panel_depth);
    return;
  }
  for_each_copied_slab(packed_, layout_, top, first, depth, count,
                       [&](const int8_t* codes, int64_t ldc, int64_t slab, int64_t height) {
                         kernels().convert_panels_int8(codes, ldc, parameters_, top + slab, first, height, count,
                                                       out + slab * kPanelColumns, panel_depth);
                       });
}

void BlockedCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                          at::BFloat16* out) const {
  for_each_copied_slab(packed_, layout_, top, first, depth, count,
                       [&](const int8_t* codes, int64_t ldc, int64_t slab, int64_t height) {
                         kernels().convert_panels_int8_bfloat16(codes, ldc, parameters_, top + slab, first, height,
                                                                count, out + slab * kPanelColumns, panel_depth);
                       });
}

void BlockedCodes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                          uint8_t* out) const {
  TORCH_INTERNAL_ASSERT(parameters_.scale == nullptr && parameters_.zero_point == nullptr);
  if (kernels().blocked_int8_panels != nullptr && layout_.in_squares() && top % 16 == 0 && first % 16 == 0 &&
      ((top + depth) % 4 == 0 || top + depth == layout_.rows)) {
    kernels().blocked_int8_panels(layout_, packed_, top, depth, first, count, out, panel_depth);
    return;
  }
  for_each_copied_slab(packed_, layout_, top, first, depth, count,
                       [&](const int8_t* codes, int64_t ldc, int64_t slab, int64_t height) {
                         kernels().int8_panels(codes, ldc, height, count, out + slab * kPanelColumns, panel_depth);
                       });
}

void BlockedCodes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  for_each_copied_slab(packed_, layout_, top, first, tile.size(0), count,
                       [&](const int8_t* codes, int64_t ldc, int64_t slab, int64_t height) {
                         convert_codes(codes, ldc, parameters_, top + slab, first, height, count, tile, slab);
                       });
}

void Int4Codes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                       float* out) const {
  TORCH_INTERNAL_ASSERT(panel_depth == depth);
  kernels().int4_panels(pack_, top, first, depth, count, out);
}

void Int4Codes::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                       at::BFloat16* out) const {
  kernels().int4_panels_bfloat16(pack_, top, first, depth, count, out, panel_depth);
}

void Int4Codes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  float* out = tile.mutable_data_ptr<float>();
  for_each_values16(pack_, top, tile.size(0), first, count, [&](int64_t row, int64_t column, int64_t i, float value) {
    out[(row + i) * count + column] = value;
  });
}

void Int4CodesTransposed::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                                 float* out) const {
  TORCH_INTERNAL_ASSERT(panel_depth == depth);
  kernels().int4_transposed_panels(pack_, top, first, depth, count, out);
}

void Int4CodesTransposed::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                                 at::BFloat16* out) const {
  kernels().int4_transposed_panels_bfloat16(pack_, top, first, depth, count, out, panel_depth);
}

void Int4CodesTransposed::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  float* out = tile.mutable_data_ptr<float>();
  for_each_values16(pack_, first, count, top, tile.size(0), [&](int64_t row, int64_t column, int64_t i, float value) {
    out[column * count + row + i] = value;
  });
}

void Int8CodesTransposed::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                                 float* out) const {
  const int64_t ldw = codes_.stride(0);
  kernels().convert_transposed_panels_int8(codes_.const_data_ptr<int8_t>() + first * ldw + top, ldw, parameters_, top,
                                           first, depth, count, out, panel_depth);
}

void Int8CodesTransposed::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                                 at::BFloat16* out) const {
  const int64_t ldw = codes_.stride(0);
  kernels().convert_transposed_panels_int8_bfloat16(codes_.const_data_ptr<int8_t>() + first * ldw + top, ldw,
                                                    parameters_, top, first, depth, count, out, panel_depth);
}

void Int8CodesTransposed::panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                                 uint8_t* out) const {
  const int64_t ldw = codes_.stride(0);
  kernels().int8_transposed_panels(codes_.const_data_ptr<int8_t>() + first * ldw + top, ldw, depth, count, out,
                                   panel_depth);
}

} // namespace qlgrad::math
