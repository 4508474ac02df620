#pragma once
// The stored weights as the GEMMs read them: a block of values at a time, converted on the fly
// from the codes where they lie, so that no float copy of the whole weight ever exists.

#include "kernels/kernels.h"

#include <ATen/core/Tensor.h>

namespace qlgrad::math {

// A weight W [depth, columns] (the product's K x N, lhs [M, depth] @ W) in its stored form.
class WeightReader {
 public:
  virtual ~WeightReader() = default;

  virtual int64_t depth() const = 0;
  virtual int64_t columns() const = 0;
  // Blocks of depth start at multiples of this.
  virtual int64_t row_alignment() const = 0;
  // Whether a column's codes lie one after another along the depth (the transpose of codes in
  // rows), rather than a row's along the columns: the panel GEMM's blocks follow the runs.
  virtual bool runs_along_depth() const { return false; }

  // Each reader gives the forms of W that the products it serves take; the others are not
  // called (they assert).

  // W[top:top + depth, first:first + count] as the panel GEMM's panels: ceil(count / kPanelColumns)
  // panels of [depth][kPanelColumns] floats, zero beyond `count`, panel_depth (= depth) rows of
  // kPanelColumns apart. Where kernels().panel_rows is.
  virtual void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const;

  // The same as bfloat16 panels of pairs of rows (rounded to nearest even; an odd depth's last
  // pair ends in a zero row), [(depth + 1) / 2][kPanelColumns][2] each, panel_depth (at least
  // depth rounded up to even; the rows past it are left as they are) rows of kPanelColumns apart.
  // Where kernels().panel_rows_bfloat16 is.
  virtual void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                      at::BFloat16* out) const;

  // The same as int8 panels of quads of rows, each value plus 128 as a uint8 (PanelRowsInt8Fn),
  // [(depth + 3) / 4][kPanelColumns][4] each, panel_depth (at least depth rounded up to a
  // multiple of 4) rows of kPanelColumns apart, for a weight of integer values. Where
  // kernels().panel_rows_int8 is.
  virtual void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
                      uint8_t* out) const;

  // W[top:top + depth, first:first + count] into `tile` ([depth, count], contiguous), in the
  // tile's dtype: float32, or bfloat16 for int8 codes.
  virtual void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const;
};

// int8 codes (or float16 values) in rows, [depth, columns] with unit stride along the columns.
class RowCodes final : public WeightReader {
 public:
  RowCodes(const at::Tensor& weight, const CodeParameters& parameters) : weight_(weight), parameters_(parameters) {}

  int64_t depth() const override { return weight_.size(0); }
  int64_t columns() const override { return weight_.size(1); }
  int64_t row_alignment() const override { return 1; }
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              at::BFloat16* out) const override;
  // The codes themselves (int8 codes, no parameters).
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              uint8_t* out) const override;
  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const override;

 private:
  const at::Tensor& weight_;
  const CodeParameters& parameters_;
};

// int8 codes in a blocked packing (fbgemm's): a slab of codes at a time is copied into rows in
// the thread's scratch, then converted as codes in rows are. The copy is a pass over int8 codes
// in cache, beside the conversion's writes of four times as many bytes. The int8 panels, which
// are the codes themselves, come straight from the AVX-512 packing's 16 x 16 squares
// (kernels().blocked_int8_panels): the whole int8 input gradient over fbgemm's packing on a
// Sapphire Rapids Xeon, 2 threads, in three alternations with the copy first, over
// torch._int_mm's time (rows x in -> out of the layer): 256 x 768 -> 3072 1.50-1.65x against
// 1.64-1.69x, 2048 x 768 -> 3072 1.66-1.85x against 1.77-2.04x, 256 x 4096 -> 4096 0.69-0.76x
// against 0.85-0.97x.
class BlockedCodes final : public WeightReader {
 public:
  BlockedCodes(const int8_t* packed, const BlockedLayout& layout, const CodeParameters& parameters)
      : packed_(packed), layout_(layout), parameters_(parameters) {}

  int64_t depth() const override { return layout_.rows; }
  int64_t columns() const override { return layout_.columns; }
  // Whole 16-row bands, which the copy moves 16 x 16 at a time.
  int64_t row_alignment() const override { return 16; }
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              at::BFloat16* out) const override;
  // The codes themselves (no parameters).
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              uint8_t* out) const override;
  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const override;

 private:
  const int8_t* packed_;
  const BlockedLayout& layout_;
  const CodeParameters& parameters_;
};

// torch's CPU int4 packing: 16 rows of a column lie together, and are read 16 at a time.
class Int4Codes final : public WeightReader {
 public:
  explicit Int4Codes(const Int4Pack& pack) : pack_(pack) {}

  int64_t depth() const override { return pack_.rows; }
  int64_t columns() const override { return pack_.columns; }
  int64_t row_alignment() const override { return 16; }
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              at::BFloat16* out) const override;
  // float32 tiles only.
  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const override;

 private:
  const Int4Pack& pack_;
};

// The transpose of torch's CPU int4 packing, W.T [K, N], the forward's weight (x @ W.T): the 16
// rows of W that lie together in a column are 16 columns of a panel's row.
class Int4CodesTransposed final : public WeightReader {
 public:
  explicit Int4CodesTransposed(const Int4Pack& pack) : pack_(pack) {}

  int64_t depth() const override { return pack_.columns; }
  int64_t columns() const override { return pack_.rows; }
  int64_t row_alignment() const override { return 1; }
  // A block of the packing's rows holds each column's codes together, one column after the other,
  // so the panel GEMM's blocks follow them: the bfloat16 training forward on a Zen 5 EPYC, 2
  // threads, alternated in one process over rotating weights, over the blocks made for codes in
  // rows: 16 and 192 x 4096 -> 4096 0.92x and 0.94x the time, 64 x 896 -> 4864, 192 x 896 -> 4864
  // and 4864 -> 896 0.96-0.99x.
  bool runs_along_depth() const override { return true; }
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              at::BFloat16* out) const override;
  // float32 tiles only.
  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const override;

 private:
  const Int4Pack& pack_;
};

// The transpose of int8 codes W [N, K] in rows, W.T [K, N]: the weight of a forward x @ W.T.
// As int8 panels, the codes themselves (torchao's int8 layers with int8 activations, no
// parameters); as float32 or bfloat16 panels, the values `parameters` make of them (torchao's
// group-wise layers; groups of whole 16 columns, or one per row).
class Int8CodesTransposed final : public WeightReader {
 public:
  explicit Int8CodesTransposed(const at::Tensor& codes, const CodeParameters& parameters = {})
      : codes_(codes), parameters_(parameters) {}

  int64_t depth() const override { return codes_.size(1); }
  int64_t columns() const override { return codes_.size(0); }
  // Whole 16 x 16 squares of codes, transposed at once.
  int64_t row_alignment() const override { return 16; }
  bool runs_along_depth() const override { return true; }
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth, float* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              at::BFloat16* out) const override;
  void panels(int64_t top, int64_t first, int64_t depth, int64_t count, int64_t panel_depth,
              uint8_t* out) const override;

 private:
  const at::Tensor& codes_;
  const CodeParameters parameters_;
};

// The row stride of codes copied out of a blocked packing: a cache line more than the row, so
// that the 16 rows a 16 x 16 copy stores to do not fall into one L1 set when the row is a
// multiple of 4 KiB (16 rows would evict each other from a 12-way set at every square).
int64_t copied_row_stride(int64_t columns);

// A thread's scratch for codes copied out of a blocked packing: at most a few hundred KiB,
// reused by every product on the thread.
int8_t* scratch_codes(int64_t bytes);

} // namespace qlgrad::math
