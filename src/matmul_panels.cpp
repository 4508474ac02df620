// The panel GEMM: float32 products from int8 (or float16, or int4) values in a GEMM of its own,
// for AVX-512 CPUs, with bfloat16 or int8 products where the CPU has them (AVX512-BF16 and
// AVX512-VNNI vectors, or AMX tiles). Laid out as GEMMs are (Goto and van de Geijn): per block of
// depth the weight is converted into panels of kPanelColumns columns (the form a GEMM packs its
// weight into anyway, so the conversion is the packing), the rows of lhs are packed once as the
// kernel reads them, and the kernel multiplies a task's rows by a panel with the sums held in
// registers (or tiles). MKL's GEMM cannot take this path: it would pack the converted tile again.
// The work is divided in one of two ways (each arithmetic's Blocking says from which row count):
//   - by columns: each thread converts the panels of its block of columns into its own L2 and
//     runs every row against them. Few rows cannot repay a trip to memory of the converted weight
//     (four times the codes' bytes).
//   - by rows and columns: the threads share one depth block's panels for every column and the
//     tasks of PanelTasks (panel_tasks.h), so that any number of threads get equal shares, on
//     layers as narrow as 768 columns; each pair of panels is converted by the first thread whose
//     task needs it, right before the task runs against it.

#include "matmul_strategies.h"
#include "panel_tasks.h"
#include "scratch.h"

#include <ATen/ATen.h>

#include <limits>
#include <numeric>

namespace qlgrad::math {
namespace {

// The depth and the columns of the blocks of panels that a thread converts at once when the work
// is divided by columns.
struct ColumnBlocks {
  int64_t depth, columns;
};

// How the AVX-512 kernels' panel GEMM blocks its work.
struct Avx512Blocking {
  // Rows from which the panels are shared (by rows and columns).
  static constexpr int64_t kSharedRowsMin = 256;
  // The depth of a block of panels divided by columns: a panel (32 KiB) stays in L1 while 12 rows
  // at a time run against it.
  static constexpr int64_t kColumnDepth = 256;
  // The depth of a block of shared panels (a panel is 128 KiB, in L2). Each block's sums are added
  // to the output: deeper blocks add fewer times. Measured on a Zen 5 EPYC at 256 x 768 x 3072,
  // 2048 x 768 x 3072 and 256 x 4096 x 4096: 1024 rows 1.05-1.16x oneDNN's fp32 GEMM, 512 rows
  // 1.05-1.17x, 256 rows 1.07-1.25x.
  static constexpr int64_t kSharedDepth = 1024;
  // Columns a thread takes at once when dividing by columns (their panels, 1 MiB, stay in L2), and
  // the pieces in which shared panels are converted.
  static constexpr int64_t kBlockColumns = 1024;
  // No parts of lhs (panel_gemm_columns): the panels stay in L1 instead.
  static constexpr int64_t kLhsPartBytes = 0;
  // The panels stay in L1 however the codes lie.
  static ColumnBlocks column_blocks(int64_t /*rows*/, int64_t /*depth*/, bool /*runs_along_depth*/) {
    return {kColumnDepth, kBlockColumns};
  }
};

// How the AMX kernels' panel GEMM blocks its work: by columns at every row count, each thread
// converting the panels of 512 columns (1 MiB of bfloat16 at a depth of 1024) into its own L2.
// On a Sapphire Rapids Xeon, 2 threads, at 256 x 896 x 4864, 256 x 4864 x 896, 256 x 768 x 3072
// and 1024 x 896 x 4864, before the parts of lhs: shared panels 1.2-1.7x the dense bfloat16 GEMM,
// these 1.2-1.7x, with blocks of depth 256 or 512 1.3-2.3x (the bfloat16 tiles take such blocks
// up to 128 rows, and up to 256 for weights at least 2048 deep: AmxBFloat16Products::column_blocks).
struct AmxBlocking {
  static constexpr int64_t kSharedRowsMin = std::numeric_limits<int64_t>::max();
  static constexpr int64_t kColumnDepth = 1024;
  // Never reached (no row count shares the panels); the shared path is compiled for every arithmetic.
  static constexpr int64_t kSharedDepth = kColumnDepth;
  static constexpr int64_t kBlockColumns = 512;
  // A part of lhs: a task's two tiles of rows over a part of the depth (512 bfloat16 or 1024
  // int8 values a row) stay in L1 while every panel's part runs against them, the panels read
  // with stream loads, which leave lhs there. A step of the tile kernel loads 4 KiB, which L2
  // alone served slower than the tiles multiply. bfloat16 products of int8 codes on a Sapphire
  // Rapids Xeon, 2 threads (rows x depth x columns), over the dense bfloat16 GEMM: 1024 x 896 x
  // 4864 1.41-1.45x before, 1.13-1.15x with parts; 256 x 896 x 4864 1.29-1.32x, 1.07-1.14x;
  // 256 x 4864 x 896 1.24-1.27x, 0.98-1.05x; 2048 x 896 x 896 1.60-1.64x, 1.31-1.42x. Parts
  // without stream loads gained a third as much; one part of the whole depth (lhs past L1), 1.33x
  // at 1024 x 896 x 4864.
  static constexpr int64_t kLhsPartBytes = 32 << 10;
  // Codes that lie along the depth (a forward's W.T: WeightReader::runs_along_depth) are read a
  // block's depth at a time from each weight row, 1024 codes, past which the next row's run starts:
  // blocks four times as deep and half as wide (the int8 tiles' 1 MiB of panels) read them in runs
  // of 4 KiB. torchao's int8 training forward (rows x in -> out) on a Sapphire Rapids Xeon, 2
  // threads, rotating weights, before and after: 16 x 4864 -> 896 0.47 -> 0.33 ms, 16 x 4096 ->
  // 4096 1.54 -> 1.16 ms, 128 x 4096 -> 4096 2.44 -> 2.04 ms, 1024 x 4096 -> 4096 10.1 -> 9.3 ms,
  // none slower.
  static ColumnBlocks column_blocks(int64_t /*rows*/, int64_t /*depth*/, bool runs_along_depth) {
    return runs_along_depth ? ColumnBlocks{4 * kColumnDepth, kBlockColumns / 2}
                            : ColumnBlocks{kColumnDepth, kBlockColumns};
  }
};

// What the panel GEMM multiplies in: float32; pairs of bfloat16 along the depth (the kernel's
// products take two at once), which the packed rows and the panels then hold in
// [depth / 2][width][2], an odd depth padded with a zero row; or quads of int8 values (panels of
// uint8, each value plus 128) in [depth / 4][width][4], with int32 sums. Each names the element
// of packed lhs (Element), of the panels (Panel) and of the sums (Sum); the depth the packing
// rounds to (kDepthStep); the rows of lhs a packed block holds (kBlockRows) and a kernel call
// takes (kTaskRows); the kernel (multiply), which each thread prepares for (prepare_thread)
// before its first call in a parallel region, and whether it rounds its last block's sums to
// bfloat16 as it stores them (kRoundsSums; else a pass of its own does); and the packers.
struct FloatOperands {
  using Element = float;
  using Panel = float;
  using Sum = float;
};
struct BFloat16Operands {
  using Element = at::BFloat16;
  using Panel = at::BFloat16;
  using Sum = float;
};
struct Int8Operands {
  using Element = int8_t;
  using Panel = uint8_t;
  using Sum = int32_t;
};

// The AVX-512 kernels take kKernelRows rows at once, from blocks of as many.
struct Avx512Kernels : Avx512Blocking {
  static constexpr bool kRoundsSums = false;
  static constexpr bool kReadsRowsInPlace = false;
  static constexpr int64_t kBlockRows = kKernelRows, kTaskRows = kKernelRows;
  static void prepare_thread() {}
};

// The AMX kernels (PanelRowsAmxFn) take two tiles of rows at once, packed as tiles or where they
// lie (rows_in_place); a thread configures its tiles once per parallel region.
struct AmxKernels : AmxBlocking {
  static constexpr bool kRoundsSums = false;
  static constexpr bool kReadsRowsInPlace = true;
  static constexpr int64_t kBlockRows = kAmxBlockRows, kTaskRows = kAmxTaskRows;
  static void prepare_thread() { kernels().configure_tiles_amx(); }
};

struct FloatProducts : FloatOperands, Avx512Kernels {
  static constexpr int64_t kDepthStep = 1;
  static PackRowsFn<float>* packer() { return kernels().pack_rows; }
  static void multiply(int64_t rows, const float* lhs, const AmxLhsLayout& /*lhs_layout*/, const float* panel,
                       int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows(rows, lhs, panel, depth, out, ldo, width, accumulate);
  }
};

struct BFloat16Products : BFloat16Operands, Avx512Kernels {
  static constexpr bool kRoundsSums = true;
  static constexpr int64_t kDepthStep = 2;
  // Codes that lie along the depth (WeightReader::runs_along_depth: the training forwards' W.T)
  // take blocks four times as deep and half as wide (the same 1 MiB of panels, in L2): each row of
  // codes is read in runs four times as long. On a Zen 5 EPYC, 2 threads, over the dense bfloat16
  // forward, blocks 256 deep and 1024 wide first: torchao's group-wise int4 layers (groups of 32;
  // rows x in -> out) 16 x 4096 -> 4096 1.49x, 1.32x; 128 x 4864 -> 896 1.20x, 1.12x; 192 x 1024
  // -> 2816 1.16x, 1.04x; torch's int4 packing 16 x 4096 -> 4096 0.96x, 0.89x; 192 x 896 -> 4864
  // 1.00x, 0.95x. Codes across the depth (the backwards) take, up to kWideRowsMax rows, blocks half
  // as deep and twice as wide (runs twice as long again, read where a few rows' products leave the
  // conversion most of the time), else the float32 panels' blocking: deeper and narrower blocks
  // took 1.1-1.4x the time at 8-16 rows of 4096 x 4096.
  static constexpr int64_t kWideRowsMax = 32;
  // Those wide blocks, on that EPYC, alternated in one process, bfloat16 gradients over the dense
  // bfloat16 GEMM's time: 4096 x 4096 at 8 rows, float16 values 0.81x -> 0.69x, groups of 32 0.68x
  // -> 0.64x, per channel 0.53x -> 0.46x (at 12-16 rows 0.93-0.97x the time, at 32 the same); the
  // decoder's layers 896 -> 4864, 4864 -> 896, 1024 -> 2816 and 2816 -> 1024 at 8-32 rows, per
  // channel and in groups of 32, 0.83-0.99x the time (896 -> 896 0.95-1.02x); at 48-64 rows
  // 0.96-1.05x.
  // Shared panels twice as deep as the float32 ones, the same bytes (panels of 128 KiB): on that
  // EPYC, alternated in one process, bfloat16 gradients at 256-512 rows of 4096 x 4096, 896 ->
  // 4864, 4864 -> 896, 768 -> 3072 and 1024 -> 2816, per channel and in groups of 32, 0.95-1.01x
  // the time (13 of 14 faster); torch's int4 packing's bfloat16 training forward at 256-384 rows
  // of 4096 -> 4096, 896 -> 4864 and 4864 -> 896 0.98-1.00x.
  static constexpr int64_t kSharedDepth = 2 * Avx512Blocking::kSharedDepth;
  static ColumnBlocks column_blocks(int64_t rows, int64_t depth, bool runs_along_depth) {
    if (runs_along_depth) {
      return {4 * kColumnDepth, kBlockColumns / 2};
    }
    return rows <= kWideRowsMax ? ColumnBlocks{kColumnDepth / 2, 2 * kBlockColumns}
                                : Avx512Kernels::column_blocks(rows, depth, runs_along_depth);
  }
  static PackRowsFn<at::BFloat16>* packer() { return kernels().pack_rows_bfloat16; }
  static PackRowsFn<float, at::BFloat16>* float_packer() { return kernels().pack_float_rows_bfloat16; }
  static void multiply(int64_t rows, const at::BFloat16* lhs, const AmxLhsLayout& /*lhs_layout*/,
                       const at::BFloat16* panel, int64_t depth, float* out, int64_t ldo, int64_t width,
                       bool accumulate, at::BFloat16* rounded, int64_t rounded_stride) {
    kernels().panel_rows_bfloat16(rows, lhs, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
  }
};

struct Int8Products : Int8Operands, Avx512Kernels {
  static constexpr int64_t kDepthStep = 4;
  // Panels of a byte a value: blocks twice (divided by columns) and four times (shared) as deep as
  // the float32 panels' hold 16 KiB and 128 KiB panels, with fewer passes of the sums. On a Zen 5
  // EPYC, 2 threads, alternated in one process, the int8 backward (quantizing the float32 gradient
  // too) over torch._int_mm's time on the quantized gradient, blocks 256 and 1024 deep first (rows
  // x in -> out): 16-32 x 768 -> 3072, 3072 -> 768, 4096 -> 4096, 896 -> 4864, 4864 -> 896
  // 0.75-0.87x, 0.63-0.82x; 64 rows 0.97-1.02x, 0.90-0.95x; 128-192 rows 1.06-1.22x, 1.00-1.15x;
  // 256 rows 0.98-1.23x, 0.97-1.17x; 384-511 rows 1.13-1.23x, 1.07-1.20x. torchao's int8 training
  // forward (its int8 activations by the int8 codes of W.T), the same layers at 16-192 rows
  // 0.87-0.98x the time, at 256-384 rows 0.91-1.01x.
  static constexpr int64_t kColumnDepth = 2 * Avx512Blocking::kColumnDepth;
  static constexpr int64_t kSharedDepth = 4 * Avx512Blocking::kSharedDepth;
  static ColumnBlocks column_blocks(int64_t /*rows*/, int64_t /*depth*/, bool /*runs_along_depth*/) {
    return {kColumnDepth, kBlockColumns};
  }
  static PackRowsFn<int8_t>* packer() { return kernels().pack_rows_int8; }
  static void multiply(int64_t rows, const int8_t* lhs, const AmxLhsLayout& /*lhs_layout*/, const uint8_t* panel,
                       int64_t depth, int32_t* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows_int8(rows, lhs, panel, depth, out, ldo, width, accumulate);
  }
};

// The same products on AMX tiles: the same panels, the depth rounded to a tile row's.
struct AmxBFloat16Products : BFloat16Operands, AmxKernels {
  static constexpr bool kRoundsSums = true;
  static constexpr int64_t kDepthStep = 32;
  // Up to 128 rows, blocks four times as wide and a quarter as deep (the same 1 MiB of panels, and
  // all rows' sums of a block, up to 1 MiB, in L2 between blocks): each row of codes is read in runs
  // four times as long, which the hardware prefetchers follow, where the conversion is most of the
  // time. bfloat16 products of int8 codes on a Sapphire Rapids Xeon, 2 threads, over the dense
  // bfloat16 GEMM (rows x depth x columns), first with the deep blocks, then twice as wide and
  // half as deep: 16 x 4096 x 4096 1.21-1.23x, 1.04-1.10x; 32 x 4096 x 4096 1.27-1.33x,
  // 1.12-1.14x; 128 x 4096 x 4096 1.18-1.23x, 1.06-1.10x; 64 x 896 x 4864 1.17-1.19x,
  // 1.05-1.07x. Twice as wide again, rotating weights (per channel; group-wise in groups of 32):
  // 16 x 4096 x 4096 2.21 -> 1.71 ms (3.29 -> 2.87), 16 x 896 x 4864 0.54 -> 0.46 ms (0.83 ->
  // 0.76), 64 x 4096 x 4096 3.10 -> 2.79 ms (4.29 -> 3.98), the same at 128 rows. With more rows
  // their sums outgrow L2: 1024 x 896 x 4864 1.13x with the deep blocks, 1.52-1.55x with blocks
  // twice as wide.
  // Codes that lie along the depth (WeightReader::runs_along_depth) run along the block's depth
  // instead: up to 128 rows, blocks twice as deep and half as wide. torchao's group-wise training
  // forward (groups of 32; rows x in -> out) over the dense bfloat16 one, same machine, rotating
  // weights: 16 x 4864 -> 896 2.60x with the wide blocks, 1.53x with these; 16 x 4096 -> 4096
  // 1.61x, 1.31x; 64 x 4864 -> 896 1.71x, 1.12x; 128 x 4864 -> 896 1.34x, 0.91x; 128 x 4096 ->
  // 4096 1.15x, 0.98x. At 256 rows both blockings measured the same (1.04-1.10x).
  // From 129 to 256 rows, weights at least 2048 deep take blocks twice as wide and half as deep
  // too (all rows' sums of a block, up to 1 MiB, still in L2): 256 x 4096 x 4096 7.64 -> 7.08 ms,
  // 256 x 4864 x 896 1.54 -> 1.47 ms, 256 x 2816 x 1024 1.11 -> 1.02 ms, 160 x 4096 x 4096 5.92 ->
  // 5.19 ms (per channel, rotating weights; groups of 32 2-6% faster); a shallower weight takes
  // more blocks so: 256 x 1536 x 2048 1.32 -> 1.42 ms, and 256 x 896 x 4864, one block of 896 or
  // two, 1.66 -> 1.83 ms.
  static ColumnBlocks column_blocks(int64_t rows, int64_t depth, bool runs_along_depth) {
    if (runs_along_depth) {
      return rows <= 128 ? ColumnBlocks{2 * kColumnDepth, kBlockColumns / 2}
                         : ColumnBlocks{kColumnDepth, kBlockColumns};
    }
    if (rows <= 128) {
      return {kColumnDepth / 4, 4 * kBlockColumns};
    }
    if (rows <= 256 && depth >= 2 * kColumnDepth) {
      return {kColumnDepth / 2, 2 * kBlockColumns};
    }
    return {kColumnDepth, kBlockColumns};
  }
  static PackRowsFn<at::BFloat16>* packer() { return kernels().pack_rows_bfloat16_amx; }
  static PackRowsFn<float, at::BFloat16>* float_packer() { return kernels().pack_float_rows_bfloat16_amx; }
  static void multiply(int64_t rows, const at::BFloat16* lhs, const AmxLhsLayout& lhs_layout, const at::BFloat16* panel,
                       int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                       int64_t rounded_stride) {
    kernels().panel_rows_bfloat16_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, rounded,
                                      rounded_stride);
  }
};

struct AmxInt8Products : Int8Operands, AmxKernels {
  static constexpr int64_t kDepthStep = 64;
  static PackRowsFn<int8_t>* packer() { return kernels().pack_rows_int8_amx; }
  static void multiply(int64_t rows, const int8_t* lhs, const AmxLhsLayout& lhs_layout, const uint8_t* panel,
                       int64_t depth, int32_t* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows_int8_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, nullptr, 0);
  }
};

// lhs [rows, depth] (in Element, or float32 for bfloat16 products; rows lhs.stride(0) apart) times
// the weight's scale (per row of the weight, or one for all, or none) as blocks of kBlockRows rows,
// each [depth][kBlockRows] (zero past the last row) as the kernel reads it, once for all threads:
// the AVX-512 kernels read a step's 12 factors from one or two cache lines, where 12 rows of lhs a
// power of two apart would compete for the same L1 sets.
template <typename Products, typename Source>
at::Tensor pack_rows(const at::Tensor& lhs, const std::optional<at::Tensor>& scale,
                     PackRowsFn<Source, typename Products::Element>* pack) {
  using Element = typename Products::Element;
  constexpr int64_t kBlockRows = Products::kBlockRows;
  const int64_t rows = lhs.size(0), depth = lhs.size(1), stored_depth = round_up(depth, Products::kDepthStep);
  at::Tensor packed = scratch(ScratchUse::kPackedRows, {(rows + kBlockRows - 1) / kBlockRows, stored_depth, kBlockRows},
                              c10::CppTypeToScalarType<Element>::value);
  const Source* source = lhs.const_data_ptr<Source>();
  const int64_t row_stride = lhs.stride(0);
  const float* factors = scale ? scale->const_data_ptr<float>() : nullptr;
  const int64_t factor_stride = scale && scale->numel() > 1 ? 1 : 0;
  Element* destination = packed.mutable_data_ptr<Element>();
  at::parallel_for(0, packed.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      pack(source + block * kBlockRows * row_stride, row_stride, std::min(kBlockRows, rows - block * kBlockRows), depth,
           factors, factor_stride, destination + block * kBlockRows * stored_depth);
    }
  });
  return packed;
}

template <typename Products>
at::Tensor pack_rows(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  if constexpr (std::is_same_v<typename Products::Element, at::BFloat16>) {
    if (lhs.scalar_type() == at::kFloat) {
      return pack_rows<Products>(lhs, scale, Products::float_packer());
    }
  }
  return pack_rows<Products>(lhs, scale, Products::packer());
}

// lhs as the kernels read it: the kernel call for the rows from `row` (a multiple of kBlockRows)
// at depth index d starts at at(row, d) and reads its rows as `layout` says. Packed by pack_rows,
// or, for the AMX kernels, lhs's own rows where the tiles can load them as they lie (rows_in_place).
template <typename Products>
struct KernelLhs {
  using Element = typename Products::Element;
  at::Tensor storage;  // the packing, or lhs
  int64_t row_stride, depth_stride;
  AmxLhsLayout layout;

  const Element* at(int64_t row, int64_t depth) const {
    return storage.const_data_ptr<Element>() + row * row_stride + depth * depth_stride;
  }
};

// Whether the AMX tiles read lhs's rows where they lie, packing none: lhs in the products' element
// type and not scaled, in whole blocks of rows (a tile's rows past lhs's last would lie past it)
// and whole tile rows of depth (a tile row past a row's end would read the next row's values,
// which the panels' zero padding could turn into NaN), its rows a stride apart that is not a
// multiple of kInPlaceStrideBytesMultiple, whose 32 rows of a task would share a few of L1's sets.
// On a Sapphire Rapids Xeon, 2 threads, the forward and backward of a 150m decoder's four shapes
// of projection at 256 rows in bfloat16 (896 -> 896, 128 and 4864; 4864 -> 896), packed and in
// place: torch's int4 packing 7.7-8.2 -> 7.0-7.2 ms, torchao's group-wise int4 layers 9.1-9.4 ->
// 8.4-9.0 ms. Rows 8 KiB apart in place: 256 x 4096 -> 4096 4.4-4.6 -> 4.9-5.2 ms.
constexpr int64_t kInPlaceStrideBytesMultiple = 1024;

template <typename Products>
bool rows_in_place(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  using Element = typename Products::Element;
  const int64_t row_bytes = lhs.stride(0) * int64_t{sizeof(Element)};
  return Products::kReadsRowsInPlace && !scale && lhs.scalar_type() == c10::CppTypeToScalarType<Element>::value &&
         lhs.stride(1) == 1 && lhs.size(0) % Products::kBlockRows == 0 && lhs.size(1) % Products::kDepthStep == 0 &&
         row_bytes % kInPlaceStrideBytesMultiple != 0;
}

template <typename Products>
KernelLhs<Products> kernel_lhs(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  constexpr int64_t kElementBytes = sizeof(typename Products::Element), kBlockRows = Products::kBlockRows;
  const int64_t depth = lhs.size(1), row_stride = lhs.stride(0);
  if (rows_in_place<Products>(lhs, scale)) {
    return {lhs,
            row_stride,
            1,
            {kBlockRows * row_stride, row_stride * kElementBytes, Products::kDepthStep * kElementBytes}};
  }
  const int64_t stored_depth = round_up(depth, Products::kDepthStep);
  return {pack_rows<Products>(lhs, scale), stored_depth, kBlockRows, AmxLhsLayout::packed(kBlockRows * stored_depth)};
}

// The rows of each panel from `written` (the reader's depth, rounded to a pair) to panel_depth
// meet lhs's zero padding: zero them, as anything else there could be a NaN or an infinity.
// (int8 panels need not: any integer times zero is zero.)
template <typename Products>
void zero_panel_padding(typename Products::Panel* panels, int64_t count, int64_t written, int64_t panel_depth) {
  if constexpr (std::is_floating_point_v<typename Products::Sum>) {
    for (int64_t column = 0; written < panel_depth && column < count; column += kPanelColumns) {
      std::fill(panels + (column * panel_depth + written * kPanelColumns),
                panels + (column * panel_depth + panel_depth * kPanelColumns), typename Products::Panel(0));
    }
  }
}

// The number of depth blocks for_each_depth_block makes.
int64_t depth_blocks(const WeightReader& reader, int64_t depth) {
  return (reader.depth() + depth - 1) / depth;
}

// The depth blocks of a reader's weight, `depth` rows deep or a little more (at most
// depth_block_max(depth, alignment)), starting at multiples of `alignment`: calls
// each(block, top, height) in order.
template <typename Each>
void for_each_depth_block(const WeightReader& reader, int64_t depth, int64_t alignment, const Each& each) {
  const int64_t blocks = depth_blocks(reader, depth);
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t top = piece_start(reader.depth(), blocks, block, alignment);
    each(block, top, piece_start(reader.depth(), blocks, block + 1, alignment) - top);
  }
}

// The deepest block for_each_depth_block makes: a near-equal share of the depth rounded down to
// the alignment can leave up to alignment - 1 rows more to another block.
int64_t depth_block_max(int64_t depth, int64_t alignment) {
  return depth + alignment;
}

// The rows a thread's panels meet at once when divided by columns: with parts of lhs
// (kLhsPartBytes), one task's, else a block of rows, whose slice of lhs stays in L2 across them.
template <typename Products>
int64_t row_step(int64_t rows) {
  if constexpr (Products::kLhsPartBytes > 0) {
    return Products::kTaskRows;
  }
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  return round_up((rows + row_blocks - 1) / row_blocks, Products::kTaskRows);
}

// Where a product's sums go (columns from the piece's first): `out`, `stride` apart, or with
// `rounded` the last block's into it in bfloat16, `rounded_stride` apart (out holding the sums
// before), or with `finish` each row_step's to it once complete. With one_row_step, out holds one
// row_step's rows (the caller's choice, where nothing needs them after their step), else all rows.
template <typename Products>
struct SumsDestination {
  typename Products::Sum* out;
  int64_t stride;
  at::BFloat16* rounded = nullptr;
  int64_t rounded_stride = 0;
  const FinishSums* finish = nullptr;
  bool one_row_step = false;
};

// The FinishSums of the int8 products (no other products take one).
template <typename Products>
void finish_sums(const SumsDestination<Products>& to, const typename Products::Sum* sums, int64_t row, int64_t rows,
                 int64_t first, int64_t count) {
  if constexpr (std::is_same_v<typename Products::Sum, int32_t>) {
    (*to.finish)(sums, to.stride, row, rows, first, count);
  }
}

// result[:, first:first + count] = lhs @ W[:, first:first + count], on one thread, in blocks of
// block_depth, with room in `panels` for depth_block_max(block_depth) x count elements. Each
// row_step's rows meet every panel of a block: without parts of lhs, panel by panel, each panel
// staying in L1 while the rows' tasks run against it; with them (one task's rows), a part of the
// depth at a time, the task's lhs over the part staying in L1 while every panel's part runs
// against it.
template <typename Products>
void panel_gemm_columns(const KernelLhs<Products>& lhs, int64_t rows, const WeightReader& reader, int64_t alignment,
                        int64_t block_depth, int64_t first, int64_t count, const SumsDestination<Products>& to,
                        typename Products::Panel* panels) {
  const int64_t blocks = depth_blocks(reader, block_depth);
  constexpr int64_t kDepthStep = Products::kDepthStep, kTaskRows = Products::kTaskRows;
  const int64_t step = row_step<Products>(rows);
  for_each_depth_block(reader, block_depth, alignment, [&](int64_t block, int64_t top, int64_t height) {
    const int64_t panel_depth = round_up(height, kDepthStep);
    reader.panels(top, first, height, count, panel_depth, panels);
    zero_panel_padding<Products>(panels, count, round_up(height, 2), panel_depth);
    const bool last = block == blocks - 1;
    for (int64_t row_first = 0; row_first < rows; row_first += step) {
      const int64_t row_last = std::min(rows, row_first + step);
      typename Products::Sum* sums = to.out + (to.one_row_step ? 0 : row_first * to.stride);
      // The task at `row` by the panel at `column`, over rows [part_top, part_top + part) of the block's panels.
      const auto multiply = [&](int64_t row, int64_t column, int64_t part_top, int64_t part, bool last_part) {
        const bool rounds = to.rounded != nullptr && last && last_part;
        Products::multiply(std::min(kTaskRows, row_last - row), lhs.at(row, top + part_top), lhs.layout,
                           panels + (column * panel_depth + part_top * kPanelColumns), part,
                           sums + ((row - row_first) * to.stride + column), to.stride, count - column,
                           /*accumulate=*/block > 0 || part_top > 0,
                           rounds ? to.rounded + (row * to.rounded_stride + column) : nullptr, to.rounded_stride);
      };
      if constexpr (Products::kLhsPartBytes > 0) {
        constexpr int64_t kPartDepthMax = Products::kLhsPartBytes / (kTaskRows * sizeof(typename Products::Element));
        const int64_t parts = (panel_depth + kPartDepthMax - 1) / kPartDepthMax;
        for (int64_t part = 0; part < parts; ++part) {
          const int64_t part_top = piece_start(panel_depth, parts, part, kDepthStep);
          const int64_t part_depth = piece_start(panel_depth, parts, part + 1, kDepthStep) - part_top;
          for (int64_t column = 0; column < count; column += kPanelColumns) {
            multiply(row_first, column, part_top, part_depth, part == parts - 1);
          }
        }
      } else {
        for (int64_t column = 0; column < count; column += kPanelColumns) {
          for (int64_t row = row_first; row < row_last; row += kTaskRows) {
            multiply(row, column, 0, panel_depth, true);
          }
        }
      }
      if (to.finish != nullptr && last) {
        finish_sums(to, sums, row_first, row_last - row_first, first, count);
      }
    }
  });
}

template <typename Products>
at::Tensor panel_gemm_in(const at::Tensor& lhs, const WeightReader& reader, const std::optional<at::Tensor>& scale,
                         bool bfloat16_result, const FinishSums* finish = nullptr) {
  using Panel = typename Products::Panel;
  using Sum = typename Products::Sum;
  constexpr int64_t kDepthStep = Products::kDepthStep;
  const int64_t rows = lhs.size(0), columns = reader.columns();
  const int64_t alignment = std::lcm(reader.row_alignment(), kDepthStep);
  const KernelLhs<Products> kernel_rows = kernel_lhs<Products>(lhs, scale);
  constexpr at::ScalarType panel_type = c10::CppTypeToScalarType<Panel>::value;
  constexpr at::ScalarType sum_type = c10::CppTypeToScalarType<Sum>::value;
  const at::TensorOptions sum_options = lhs.options().dtype(sum_type);
  if (rows < Products::kSharedRowsMin) {
    // With sums rounded as they are stored, the float32 ones are needed only before the last
    // block's last part; with them or with `finish`, each thread holds its piece of them (one
    // row_step's rows where the depth is one block).
    const bool rounds = Products::kRoundsSums && bfloat16_result;
    const ColumnBlocks blocking = Products::column_blocks(rows, reader.depth(), reader.runs_along_depth());
    const ColumnTasks pieces(columns, blocking.columns, kPanelColumns, at::get_num_threads());
    const bool one_block = depth_blocks(reader, blocking.depth) == 1;
    const bool holds = finish != nullptr || rounds;
    at::Tensor result, rounded;
    if (!holds) {
      result = at::empty({rows, columns}, sum_options);
    }
    if (rounds) {
      rounded = at::empty({rows, columns}, lhs.options().dtype(at::kBFloat16));
    }
    const int64_t widest = pieces.widest();
    at::parallel_for(0, pieces.size(), 1, [&](int64_t begin, int64_t end) {
      Products::prepare_thread();
      at::Tensor panels =
          scratch(ScratchUse::kPanels, {depth_block_max(blocking.depth, alignment) * widest}, panel_type);
      const at::Tensor held =
          holds ? scratch(ScratchUse::kSums, {one_block ? row_step<Products>(rows) : rows, widest}, sum_type)
                : at::Tensor();
      for (int64_t index = begin; index < end; ++index) {
        const int64_t first = pieces.first(index);
        SumsDestination<Products> to{nullptr, columns};
        if (holds) {
          to = {held.template mutable_data_ptr<Sum>(), widest, nullptr, 0, finish, one_block};
        } else {
          to.out = result.template mutable_data_ptr<Sum>() + first;
        }
        if (rounds) {
          to.rounded = rounded.mutable_data_ptr<at::BFloat16>() + first;
          to.rounded_stride = columns;
        }
        panel_gemm_columns<Products>(kernel_rows, rows, reader, alignment, blocking.depth, first, pieces.width(index),
                                     to, panels.template mutable_data_ptr<Panel>());
      }
    });
    return rounds ? rounded : bfloat16_result ? result.to(at::kBFloat16) : result;
  }
  // With sums rounded as they are stored, the last block's go to `rounded`, and float32 ones are
  // needed only before it. With `finish`, each task's sums are finished as soon as its last block's
  // are stored, in L1; in one block, into a task's buffer of the thread's. With a pass of its own
  // over the sums of every row and column, read back from memory, the int8 backward of 1024-2048
  // rows of 3072 -> 768 and 4864 -> 896 took 1.26-1.64x torch._int_mm's time on a Zen 5 EPYC, 2
  // threads; so, 1.16-1.47x (runs apart).
  const bool rounds = Products::kRoundsSums && bfloat16_result && finish == nullptr;
  const int64_t blocks = depth_blocks(reader, Products::kSharedDepth);
  const bool task_sums = finish != nullptr && blocks == 1;
  const at::Tensor result =
      (rounds || task_sums) && blocks == 1 ? at::Tensor() : at::empty({rows, columns}, sum_options);
  const at::Tensor rounded = rounds ? at::empty({rows, columns}, lhs.options().dtype(at::kBFloat16)) : at::Tensor();
  Sum* out = result.defined() ? result.template mutable_data_ptr<Sum>() : nullptr;
  // One parallel region per depth block (packing lhs a block at a time would cost a third,
  // measured slower than packing it once).
  at::Tensor shared_panels =
      scratch(ScratchUse::kPanels,
              {depth_block_max(Products::kSharedDepth, alignment) * round_up(columns, kPanelColumns)}, panel_type);
  Panel* panels = shared_panels.template mutable_data_ptr<Panel>();
  // Chunks of one width, which the tasks' order (PanelTasks) follows.
  const int64_t chunk = round_up(
      ColumnTasks(columns, Products::kBlockColumns, kPanelColumns, at::get_num_threads()).width(0), kPanelColumns);
  const PanelTasks tasks(rows, columns, chunk, Products::kTaskRows);
  // The panels are converted two at a time, a cache line of each row's int8 codes, into the L2 of
  // the thread that multiplies by them first. Against converting every panel of a depth block in
  // a parallel region of its own, then multiplying (its panels, 8-16 MiB at 4096 columns, read
  // back from L3), on a Zen 5 EPYC, 2 threads, alternated in one process, over oneDNN's fp32 GEMM
  // (rows x in -> out): fp32 of fbgemm's packing, 256 x 4096 -> 4096 1.19x -> 1.13x (compare.py
  // 1.17-1.18x -> 1.14-1.16x), 512 x 4096 -> 4096 1.06x -> 1.04x, 2048 x 768 -> 3072 1.05x ->
  // 1.02x, 256 x 768 -> 3072 1.08x -> 1.07x; of int8 codes in rows per channel, 256 x 4096 ->
  // 4096 1.10x -> 1.08x; the bf16 and int8 precisions within the runs' spread. The 768 -> 3072
  // layers in compare.py, libraries alternated between processes, within theirs (256 and 2048
  // rows 1.04-1.10x before, 1.05-1.12x after).
  constexpr int64_t kConvertedColumns = 2 * kPanelColumns;
  OnceEachPiece converted((columns + kConvertedColumns - 1) / kConvertedColumns);
  for_each_depth_block(reader, Products::kSharedDepth, alignment, [&](int64_t block, int64_t top, int64_t height) {
    const int64_t panel_depth = round_up(height, kDepthStep);
    converted.reset();
    at::parallel_for(0, tasks.size(), 1, [&](int64_t begin, int64_t end) {
      Products::prepare_thread();
      const at::Tensor held =
          task_sums ? scratch(ScratchUse::kSums, {Products::kTaskRows, kPanelColumns}, sum_type) : at::Tensor();
      for (int64_t index = begin; index < end; ++index) {
        const PanelTask task = tasks[index];
        const int64_t piece = task.column / kConvertedColumns;
        converted.ensure(piece, [&] {
          const int64_t first = piece * kConvertedColumns, count = std::min(kConvertedColumns, columns - first);
          reader.panels(top, first, height, count, panel_depth, panels + first * panel_depth);
          zero_panel_padding<Products>(panels + first * panel_depth, count, round_up(height, 2), panel_depth);
        });
        const int64_t offset = task.row * columns + task.column;
        at::BFloat16* rounded_sums =
            rounds && block == blocks - 1 ? rounded.mutable_data_ptr<at::BFloat16>() + offset : nullptr;
        Sum* sums = task_sums ? held.template mutable_data_ptr<Sum>() : out != nullptr ? out + offset : nullptr;
        const int64_t sums_stride = task_sums ? kPanelColumns : columns;
        Products::multiply(task.rows, kernel_rows.at(task.row, top), kernel_rows.layout,
                           panels + task.column * panel_depth, panel_depth, sums, sums_stride, task.columns,
                           /*accumulate=*/block > 0, rounded_sums, columns);
        if (finish != nullptr && block == blocks - 1) {
          finish_sums(SumsDestination<Products>{nullptr, sums_stride, nullptr, 0, finish}, sums, task.row, task.rows,
                      task.column, task.columns);
        }
      }
    });
  });
  if (finish != nullptr) {
    return at::Tensor();
  }
  return rounds ? rounded : bfloat16_result ? result.to(at::kBFloat16) : result;
}

} // namespace

int64_t int8_rows_stride(int64_t depth) {
  return depth % kInPlaceStrideBytesMultiple == 0 ? depth + kCacheLine : depth;
}

at::Tensor panel_gemm(const at::Tensor& lhs, const WeightReader& reader, const std::optional<at::Tensor>& scale,
                      std::optional<at::ScalarType> products, bool bfloat16_result) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() != at::kChar, "int8 products go through panel_gemm_int8");
  TORCH_INTERNAL_ASSERT(!products || *products == lhs.scalar_type() ||
                        (*products == at::kBFloat16 && lhs.scalar_type() == at::kFloat));
  const auto& kernel = kernels();
  if (products.value_or(lhs.scalar_type()) == at::kBFloat16) {
    return kernel.panel_rows_bfloat16_amx != nullptr
               ? panel_gemm_in<AmxBFloat16Products>(lhs, reader, scale, bfloat16_result)
               : panel_gemm_in<BFloat16Products>(lhs, reader, scale, bfloat16_result);
  }
  return panel_gemm_in<FloatProducts>(lhs, reader, scale, bfloat16_result);
}

void panel_gemm_int8(const at::Tensor& lhs, const WeightReader& reader, const FinishSums& finish) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kChar);
  if (kernels().panel_rows_int8_amx != nullptr) {
    panel_gemm_in<AmxInt8Products>(lhs, reader, std::nullopt, false, &finish);
  } else {
    panel_gemm_in<Int8Products>(lhs, reader, std::nullopt, false, &finish);
  }
}

} // namespace qlgrad::math
