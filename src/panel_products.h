#pragma once
// How the panel GEMM (matmul_panels.cpp) blocks and multiplies in each arithmetic: the blockings
// of the AVX-512 kernels and of the AMX tiles, the operands (float32, pairs of bfloat16, quads of
// int8), and the products that join them to their kernels, packers and measured block sizes.

#include "kernels/kernels.h"

#include <cstdint>
#include <limits>

namespace qlgrad::math {

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
  // to the output: deeper blocks add fewer times. Measured on a Zen 4 EPYC at 256 x 768 x 3072,
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

// Whether the AVX-512 kernels that can (the bfloat16 and int8 products') read lhs's rows where they
// lie: on AMD's CPUs, where that measured faster, unless QLGRAD_ROWS_IN_PLACE is "0"; "1" reads them
// so on any CPU, so that the tests take both paths on every machine. Intel's CPUs, unmeasured, pack
// them.
inline bool avx512_rows_in_place() {
  static const bool in_place = measured_choice("QLGRAD_ROWS_IN_PLACE", !is_intel_cpu());
  return in_place;
}

// The AVX-512 kernels take kKernelRows rows at once, from blocks of as many.
struct Avx512Kernels : Avx512Blocking {
  static constexpr bool kRoundsSums = false;
  static bool reads_rows_in_place() { return false; }
  // Rows in place need not come in whole blocks: a kernel call reads the rows it is given.
  static constexpr int64_t kInPlaceRowsMultiple = 1;
  static constexpr int64_t kBlockRows = kKernelRows, kTaskRows = kKernelRows;
  static void prepare_thread() {}
};

// The AMX kernels (PanelRowsAmxFn) take two tiles of rows at once, packed as tiles or where they
// lie (rows_in_place); a thread configures its tiles once per parallel region.
struct AmxKernels : AmxBlocking {
  static constexpr bool kRoundsSums = false;
  static bool reads_rows_in_place() { return true; }
  // A tile's rows past lhs's last would lie past it.
  static constexpr int64_t kInPlaceRowsMultiple = kAmxBlockRows;
  static constexpr int64_t kBlockRows = kAmxBlockRows, kTaskRows = kAmxTaskRows;
  static void prepare_thread() { kernels().configure_tiles_amx(); }
};

struct FloatProducts : FloatOperands, Avx512Kernels {
  static constexpr int64_t kDepthStep = 1;
  static PackRowsFn<float>* packer() { return kernels().pack_rows; }
  static void multiply(int64_t rows, const float* lhs, const LhsLayout& /*lhs_layout*/, const float* panel,
                       int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows(rows, lhs, panel, depth, out, ldo, width, accumulate);
  }
};

struct BFloat16Products : BFloat16Operands, Avx512Kernels {
  static constexpr bool kRoundsSums = true;
  static constexpr int64_t kDepthStep = 2;
  // bfloat16 rows read where they lie (rows_in_place), packing none. On a Zen 5 EPYC, 2 threads,
  // alternated in one process, over the dense bfloat16 layers' time, the decoder's four shapes (896
  // -> 896, 128 and 4864; 4864 -> 896, four copies each) packed and in place: torch's int4 packing
  // at 256 rows forward 1.05-1.09x -> 1.00-1.02x, backward 1.02-1.04x -> 0.95-0.98x, at 512-1024
  // rows 1.03-1.07x -> 0.94-0.99x and 0.97-1.00x -> 0.92-0.96x; torchao's group-wise int4 layers'
  // backward at 256-1024 rows 0.98-1.05x -> 0.92-0.99x; at 16-192 rows, whose products are divided
  // by columns, 0.94-1.00x the time.
  static bool reads_rows_in_place() { return avx512_rows_in_place(); }
  // Codes that lie along the depth (WeightReader::runs_along_depth: the training forwards' W.T)
  // take blocks twice as deep and half as wide (512 KiB of panels, in L2 beside the rows of x):
  // each row of codes is read in runs twice as long. On a Zen 4 EPYC, 2 threads, over the dense
  // bfloat16 forward, blocks 256 deep and 1024 wide first, then four times as deep and half as wide
  // (1 MiB of panels): torchao's group-wise int4 layers (groups of 32; rows x in -> out) 16 x 4096
  // -> 4096 1.49x, 1.32x; 128 x 4864 -> 896 1.20x, 1.12x; 192 x 1024 -> 2816 1.16x, 1.04x; torch's
  // int4 packing 16 x 4096 -> 4096 0.96x, 0.89x; 192 x 896 -> 4864 1.00x, 0.95x. Against those,
  // these, alternated in one process, torch's int4 packing at 16 rows of 4096 -> 4096, 896 ->
  // 4864, 1024 -> 2816 and 2816 -> 1024 0.87-0.97x the time, at 64-192 rows (4864 -> 896 too)
  // 0.95-1.00x; bfloat16 inputs of group-wise codes without int8 activations 0.99-1.03x at 16-192
  // rows. Codes across the depth (the backwards) take, up to kWideRowsMax rows, blocks half
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
      return {2 * kColumnDepth, kBlockColumns / 2};
    }
    return rows <= kWideRowsMax ? ColumnBlocks{kColumnDepth / 2, 2 * kBlockColumns}
                                : Avx512Kernels::column_blocks(rows, depth, runs_along_depth);
  }
  static PackRowsFn<at::BFloat16>* packer() { return kernels().pack_rows_bfloat16; }
  static PackRowsFn<float, at::BFloat16>* float_packer() { return kernels().pack_float_rows_bfloat16; }
  static void multiply(int64_t rows, const at::BFloat16* lhs, const LhsLayout& lhs_layout, const at::BFloat16* panel,
                       int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                       int64_t rounded_stride) {
    const int64_t ldl = lhs_layout.in_place ? lhs_layout.row_bytes / int64_t{sizeof(at::BFloat16)} : 0;
    kernels().panel_rows_bfloat16(rows, lhs, ldl, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
  }
};

struct Int8Products : Int8Operands, Avx512Kernels {
  static constexpr int64_t kDepthStep = 4;
  // int8 rows read where they lie (rows_in_place; the int8 backward's quantized gradient spaced by
  // int8_rows_stride), packing none. On a Zen 5 EPYC, 2 threads, alternated in one process, over the
  // packed rows' time: the int8 backward (rows x in -> out, per channel) at 1024 x 896 -> 4864 and
  // 2048 x 768 -> 3072 0.91-0.92x, at 32-256 rows of 768 -> 3072, 3072 -> 768, 896 -> 4864 and 4096
  // -> 4096 0.97-1.00x; torchao's int8 training forward through the 150m decoder's four shapes
  // (bfloat16, four copies each) at 16-64 rows 0.93-0.94x, at 256-1024 rows 0.97-1.01x.
  static bool reads_rows_in_place() { return avx512_rows_in_place(); }
  // Panels of a byte a value: blocks twice (divided by columns) and four times (shared) as deep as
  // the float32 panels' hold 16 KiB and 128 KiB panels, with fewer passes of the sums. On a Zen 4
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
  static void multiply(int64_t rows, const int8_t* lhs, const LhsLayout& lhs_layout, const uint8_t* panel,
                       int64_t depth, int32_t* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows_int8(rows, lhs, lhs_layout.in_place ? lhs_layout.row_bytes : 0, panel, depth, out, ldo, width,
                              accumulate);
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
  static void multiply(int64_t rows, const at::BFloat16* lhs, const LhsLayout& lhs_layout, const at::BFloat16* panel,
                       int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                       int64_t rounded_stride) {
    kernels().panel_rows_bfloat16_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, rounded,
                                      rounded_stride);
  }
};

struct AmxInt8Products : Int8Operands, AmxKernels {
  static constexpr int64_t kDepthStep = 64;
  static PackRowsFn<int8_t>* packer() { return kernels().pack_rows_int8_amx; }
  static void multiply(int64_t rows, const int8_t* lhs, const LhsLayout& lhs_layout, const uint8_t* panel,
                       int64_t depth, int32_t* out, int64_t ldo, int64_t width, bool accumulate,
                       at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
    kernels().panel_rows_int8_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, nullptr, 0);
  }
};

} // namespace qlgrad::math
