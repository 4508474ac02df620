// Readers of torch's int4 packing (AVX-512): its panels, converted 16 x 16 values at a time (16
// rows of a column lie together in the packing, and a transpose in registers turns them into the
// panels' rows), and the stream for a few rows, as dot products along those 16 rows. The forward's
// panels, of the transposed weight, need no transpose: those 16 values are a panel row's half.

#include "variants.h"

#include <algorithm>

#include "avx512.h"
#include "int4_vectors_avx512.h"

namespace qlgrad::math {
namespace {

// The partial sums of the int4 stream's columns that stay in L1 while every row of the packing
// passes: where a pass over every row for all of a thread's columns at once sent each row's
// partial sums to L2 and back, a bound on its speed.
constexpr int64_t kStreamedPartialBytes = 16 << 10;

// The int4 stream of kernels.h for Rows rows: no value is stored, where the panels would convert
// and transpose every one for a single row. `partial` holds a 16-lane sum per column and row,
// reduced at the end, for a chunk of columns at a time (each lane's sum runs along the rows in
// order whatever the chunk).
template <int64_t Rows>
void stream_columns(const Int4Pack& pack, const float* lhs, int64_t ldl, int64_t first, int64_t count, float* partial,
                    float* out, int64_t ldo) {
  constexpr int64_t kLanes = 16;
  constexpr int64_t kChunk = kStreamedPartialBytes / int64_t{sizeof(float)} / (Rows * kLanes) / kLanes * kLanes;
  for (int64_t chunk = 0; chunk < count; chunk += kChunk) {
    const int64_t columns = std::min(kChunk, count - chunk);
    std::fill(partial, partial + columns * Rows * kLanes, 0.0f);
    for (int64_t row = 0; row < pack.rows; row += kLanes) {
      const auto where = pack.rows16(row);
      __m512 factors[Rows];
      for (int64_t r = 0; r < Rows; ++r) {
        factors[r] = _mm512_loadu_ps(lhs + r * ldl + row);
      }
      for (int64_t column = 0; column < columns; column += kLanes) {
        __m512 scales, zeros;
        scales_and_zeros16(pack, row, first + chunk + column, scales, zeros);
        for (int64_t i = 0; i < kLanes; ++i) {
          const __m512 values = values16(where, first + chunk + column + i, scales, zeros);
          float* sums = partial + (column + i) * Rows * kLanes;
          for (int64_t r = 0; r < Rows; ++r) {
            _mm512_storeu_ps(sums + r * kLanes,
                             _mm512_fmadd_ps(factors[r], values, _mm512_loadu_ps(sums + r * kLanes)));
          }
        }
      }
    }
    for (int64_t c = 0; c < columns; ++c) {
      for (int64_t r = 0; r < Rows; ++r) {
        out[r * ldo + first + chunk + c] = _mm512_reduce_add_ps(_mm512_loadu_ps(partial + (c * Rows + r) * kLanes));
      }
    }
  }
}

} // namespace

void int4_panels_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count, float* out) {
  for_each_square(pack, top, first, depth, count, [&](int64_t row, int64_t column, const __m512(&values)[16]) {
    float* panel = out + (column / kPanelColumns * kPanelColumns) * depth + column % kPanelColumns;
    for (int64_t i = 0; i < 16; ++i) {
      _mm512_storeu_ps(panel + (row + i) * kPanelColumns, values[i]);
    }
  });
}

void int4_transposed_panels_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                                   float* out) {
  for_each_column16<1>(pack, top, first, depth, count, [&](int64_t row, int64_t k, const __m512(&values)[1]) {
    _mm512_storeu_ps(out + row / kPanelColumns * kPanelColumns * depth + k * kPanelColumns + row % kPanelColumns,
                     values[0]);
  });
}

void int4_stream_avx512(const Int4Pack& pack, int64_t rows, const float* lhs, int64_t ldl, int64_t first, int64_t count,
                        float* partial, float* out, int64_t ldo) {
  with_rows<kInt4StreamedRowsMax>(
      rows, [&]<int64_t Rows>() { stream_columns<Rows>(pack, lhs, ldl, first, count, partial, out, ldo); });
}

} // namespace qlgrad::math
