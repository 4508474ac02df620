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
#include "panel_products.h"
#include "panel_tasks.h"
#include "scratch.h"

#include <ATen/ATen.h>

#include <numeric>

namespace qlgrad::math {
namespace {

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
  const bool streamed = packed_rows_streamed(rows);
  at::parallel_for(0, packed.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      pack(source + block * kBlockRows * row_stride, row_stride, std::min(kBlockRows, rows - block * kBlockRows), depth,
           factors, factor_stride, destination + block * kBlockRows * stored_depth, streamed);
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
// or lhs's own rows where the kernels read them as they lie (rows_in_place).
template <typename Products>
struct KernelLhs {
  using Element = typename Products::Element;
  at::Tensor storage;  // the packing, or lhs
  int64_t row_stride, depth_stride;
  LhsLayout layout;
  // storage's elements, found once rather than at each kernel call.
  const Element* data = storage.const_data_ptr<Element>();

  const Element* at(int64_t row, int64_t depth) const { return data + row * row_stride + depth * depth_stride; }
};

// Whether the kernels read lhs's rows where they lie, packing none (where Products::
// reads_rows_in_place): lhs in the products' element type and not scaled, in whole blocks of rows
// where the kernels need them (kInPlaceRowsMultiple) and whole steps of depth (for AMX tiles, whole
// tile rows: one past a row's end would read the next row's values, which the panels' zero padding
// could turn into NaN), its rows a stride apart that is not a multiple of
// kInPlaceStrideBytesMultiple, whose rows of a task would share a few of L1's sets. On a Sapphire
// Rapids Xeon, 2 threads, the forward and backward of a 150m decoder's four shapes of projection at
// 256 rows in bfloat16 (896 -> 896, 128 and 4864; 4864 -> 896), packed and in place on AMX tiles:
// torch's int4 packing 7.7-8.2 -> 7.0-7.2 ms, torchao's group-wise int4 layers 9.1-9.4 -> 8.4-9.0
// ms. Rows 8 KiB apart in place: 256 x 4096 -> 4096 4.4-4.6 -> 4.9-5.2 ms.
constexpr int64_t kInPlaceStrideBytesMultiple = 1024;

template <typename Products>
bool rows_in_place(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  using Element = typename Products::Element;
  const int64_t row_bytes = lhs.stride(0) * int64_t{sizeof(Element)};
  return Products::reads_rows_in_place() && !scale && lhs.scalar_type() == c10::CppTypeToScalarType<Element>::value &&
         lhs.stride(1) == 1 && lhs.size(0) % Products::kInPlaceRowsMultiple == 0 &&
         lhs.size(1) % Products::kDepthStep == 0 && row_bytes % kInPlaceStrideBytesMultiple != 0;
}

template <typename Products>
KernelLhs<Products> kernel_lhs(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  constexpr int64_t kElementBytes = sizeof(typename Products::Element), kBlockRows = Products::kBlockRows;
  const int64_t depth = lhs.size(1), row_stride = lhs.stride(0);
  if (rows_in_place<Products>(lhs, scale)) {
    return {
        lhs,
        row_stride,
        1,
        {kBlockRows * row_stride, row_stride * kElementBytes, Products::kDepthStep * kElementBytes, /*in_place=*/true}};
  }
  const int64_t stored_depth = round_up(depth, Products::kDepthStep);
  return {pack_rows<Products>(lhs, scale), stored_depth, kBlockRows, LhsLayout::packed(kBlockRows * stored_depth)};
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

// The depth of a block of shared panels: Products::kSharedDepth, or, where the sums of every row
// and column lie past the threads' L2 (which each further block reads back and writes again), as
// deep as kDeepSharedPanelsBytes of panels allow. On a Zen 5 EPYC, 2 threads, alternated between
// processes, over oneDNN's fp32 product and the dense bfloat16 one (rows x in -> out, 1024-row
// blocks first): fbgemm's packing in fp32, 1024 and 2048 x 768 -> 3072 1.19-1.24x -> 1.11-1.15x,
// 1024 x 896 -> 4864 1.19-1.21x -> 1.13-1.14x; torchao's int8 layers' bfloat16 backward 1.19-1.22x
// -> 1.03-1.07x, 1.15x -> 1.01-1.07x; 1024 x 4096 -> 4096 (16 MiB of panels a block already) the
// same. With fewer rows, whose sums stay in L2, the deeper blocks' rows of lhs left it: 256-512 x
// 768 -> 3072 and 256 x 896 -> 4864 0.97-1.15x the time. Other CPUs, unmeasured (a Zen 4, whose
// products are half as fast, waits on memory less), keep their blocks.
constexpr int64_t kDeepSharedPanelsBytes = 12 << 20;
constexpr int64_t kL2Bytes = 1 << 20;

template <typename Products>
int64_t shared_block_depth(int64_t rows, int64_t columns) {
  const int64_t sums_bytes = rows * columns * int64_t{sizeof(typename Products::Sum)};
  if (sums_bytes <= at::get_num_threads() * kL2Bytes || amd_cpu_family() < kAmdZen5Family) {
    return Products::kSharedDepth;
  }
  return std::max(Products::kSharedDepth, kDeepSharedPanelsBytes / (round_up(columns, kPanelColumns) *
                                                                    int64_t{sizeof(typename Products::Panel)}));
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
  // rows of 3072 -> 768 and 4864 -> 896 took 1.26-1.64x torch._int_mm's time on a Zen 4 EPYC, 2
  // threads; so, 1.16-1.47x (runs apart).
  const bool rounds = Products::kRoundsSums && bfloat16_result && finish == nullptr;
  const int64_t shared_depth = shared_block_depth<Products>(rows, columns);
  const int64_t blocks = depth_blocks(reader, shared_depth);
  const bool task_sums = finish != nullptr && blocks == 1;
  const at::Tensor result =
      (rounds || task_sums) && blocks == 1 ? at::Tensor() : at::empty({rows, columns}, sum_options);
  const at::Tensor rounded = rounds ? at::empty({rows, columns}, lhs.options().dtype(at::kBFloat16)) : at::Tensor();
  Sum* out = result.defined() ? result.template mutable_data_ptr<Sum>() : nullptr;
  // One parallel region per depth block (packing lhs a block at a time would cost a third,
  // measured slower than packing it once).
  at::Tensor shared_panels = scratch(
      ScratchUse::kPanels, {depth_block_max(shared_depth, alignment) * round_up(columns, kPanelColumns)}, panel_type);
  Panel* panels = shared_panels.template mutable_data_ptr<Panel>();
  // Chunks of one width, which the tasks' order (PanelTasks) follows.
  const int64_t chunk = round_up(
      ColumnTasks(columns, Products::kBlockColumns, kPanelColumns, at::get_num_threads()).width(0), kPanelColumns);
  const PanelTasks tasks(rows, columns, chunk, Products::kTaskRows);
  // The panels are converted two at a time, a cache line of each row's int8 codes, into the L2 of
  // the thread that multiplies by them first. Against converting every panel of a depth block in
  // a parallel region of its own, then multiplying (its panels, 8-16 MiB at 4096 columns, read
  // back from L3), on a Zen 4 EPYC, 2 threads, alternated in one process, over oneDNN's fp32 GEMM
  // (rows x in -> out): fp32 of fbgemm's packing, 256 x 4096 -> 4096 1.19x -> 1.13x (compare.py
  // 1.17-1.18x -> 1.14-1.16x), 512 x 4096 -> 4096 1.06x -> 1.04x, 2048 x 768 -> 3072 1.05x ->
  // 1.02x, 256 x 768 -> 3072 1.08x -> 1.07x; of int8 codes in rows per channel, 256 x 4096 ->
  // 4096 1.10x -> 1.08x; the bf16 and int8 precisions within the runs' spread. The 768 -> 3072
  // layers in compare.py, libraries alternated between processes, within theirs (256 and 2048
  // rows 1.04-1.10x before, 1.05-1.12x after).
  constexpr int64_t kConvertedColumns = 2 * kPanelColumns;
  OnceEachPiece converted((columns + kConvertedColumns - 1) / kConvertedColumns);
  for_each_depth_block(reader, shared_depth, alignment, [&](int64_t block, int64_t top, int64_t height) {
    const int64_t panel_depth = round_up(height, kDepthStep);
    converted.reset();
    at::parallel_for(0, tasks.size(), 1, [&](int64_t begin, int64_t end) {
      Products::prepare_thread();
      const at::Tensor held =
          task_sums ? scratch(ScratchUse::kSums, {Products::kTaskRows, kPanelColumns}, sum_type) : at::Tensor();
      Sum* task_buffer = task_sums ? held.template mutable_data_ptr<Sum>() : nullptr;
      at::BFloat16* rounded_data = rounds && block == blocks - 1 ? rounded.mutable_data_ptr<at::BFloat16>() : nullptr;
      for (int64_t index = begin; index < end; ++index) {
        const PanelTask task = tasks[index];
        const int64_t piece = task.column / kConvertedColumns;
        converted.ensure(piece, [&] {
          const int64_t first = piece * kConvertedColumns, count = std::min(kConvertedColumns, columns - first);
          reader.panels(top, first, height, count, panel_depth, panels + first * panel_depth);
          zero_panel_padding<Products>(panels + first * panel_depth, count, round_up(height, 2), panel_depth);
        });
        const int64_t offset = task.row * columns + task.column;
        at::BFloat16* rounded_sums = rounded_data != nullptr ? rounded_data + offset : nullptr;
        Sum* sums = task_sums ? task_buffer : out != nullptr ? out + offset : nullptr;
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

// Where the packed rows go past the caches: from this many rows. On a Zen 4 EPYC, 2 threads, a
// sequence of a 150m decoder's products as a training step runs them (8 layers of 896 -> 896,
// 128, 128, 896, 4864, 4864 and 4864 -> 896 in int8 codes per channel: torchao's int8 training
// forward through all, then the bf16 backward in reverse), streamed and cached passes alternated
// in one process, forward and backward over their cached time: 192-512 rows 0.95-0.99x and
// 0.94-0.96x (256 rows, twice: 0.96x and 0.94x), 1024 rows 1.00x and 0.99-1.03x, 128 rows 1.00x and
// 0.98x, 64 rows 0.96-0.98x and 0.95-1.01x, but 32-48 rows 1.01-1.04x and 0.99-1.03x: there the rows
// read back from memory cost more than the waits they spare. Each product alone, repeated (the
// same weights at 256 rows: 896 -> 896, 128, 4864; 4864 -> 896; 3072 -> 768; 768 -> 3072): the
// int8 backward 0.88-1.00x, bf16 0.87-0.98x, fp32 0.90-0.99x, torchao's int8 forward 0.91-1.01x.
// With one thread, nothing to spare: bf16 and int8 at 256 rows 0.98-1.08x.
constexpr int64_t kStreamedPackedRowsMin = 128;

namespace {

// The packed rows stream on AMD's Zen 4 family (kAmdZen4Family) only. On a Zen 5 EPYC, whose stores
// did not wait so, the rows kept in the caches measured faster: 2 threads, alternated in one
// process, cached over streamed time, the decoder's sequence above at 128-256 rows forward 0.98x
// and backward 0.93-0.94x, at 512-1024 rows 0.97-1.03x and 0.96-1.02x, its group-wise int4 layers
// at 256 rows 0.98x and 0.96x, whole LoRA steps of that decoder on 256 tokens (torchao's int8 and
// int4 layers, bf16 base) alternated step by step 0.99-1.01x; each product alone, repeated
// (quantize_dynamic's layers): 256 and 512 x 768 -> 3072 fp32 0.86-0.88x, bf16 0.88-0.95x, int8
// 0.92-0.93x; 2048 rows 0.94-1.00x; 1024 x 896 -> 4864 0.94-0.98x; 256 x 4096 -> 4096 0.98-1.00x.
// Intel's CPUs, unmeasured, keep their rows in the caches too.
//
// Whether this process streams packed rows (where packed_rows_streamed asks for it): on Zen 4,
// unless QLGRAD_STREAMED_PACKED_ROWS is "0"; "1" streams them on any CPU, so that the tests take
// both paths on every machine.
bool streams_packed_rows() {
  static const bool streams = measured_choice("QLGRAD_STREAMED_PACKED_ROWS", amd_cpu_family() == kAmdZen4Family);
  return streams;
}

} // namespace

bool packed_rows_streamed(int64_t rows) {
  return rows >= kStreamedPackedRowsMin && at::get_num_threads() > 1 && streams_packed_rows();
}

int64_t int8_rows_stride(int64_t depth) {
  const auto& kernel = kernels();
  const bool in_place = kernel.panel_rows_int8_amx != nullptr
                            ? AmxInt8Products::reads_rows_in_place()
                            : kernel.panel_rows_int8 != nullptr && Int8Products::reads_rows_in_place();
  return in_place && depth % kInPlaceStrideBytesMultiple == 0 ? depth + kCacheLine : depth;
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
