// The panel GEMM: float32 products from int8 (or float16, or int4) values in a GEMM of its own,
// for AVX-512 CPUs. Laid out as GEMMs are (Goto and van de Geijn): per block of depth the weight
// is converted into panels of kPanelColumns columns (the form a GEMM packs its weight into anyway,
// so the conversion is the packing), the rows of lhs are packed by kKernelRows once, and the
// kernel multiplies kKernelRows rows by a panel with the sums held in registers. MKL's GEMM cannot
// take this path: it would pack the converted tile again. The work is divided in one of two ways:
//   - by columns, below kSharedPanelRowsMin rows: each thread converts the panels of its block of
//     columns into its own L2 and runs every row against them. Few rows cannot repay a trip to
//     memory of the converted weight (four times the codes' bytes).
//   - by rows and columns from kSharedPanelRowsMin rows: all threads convert one depth block's
//     panels for every column, then share the tasks of PanelTasks (panel_tasks.h), so that any
//     number of threads get equal shares, on layers as narrow as 768 columns.

#include "matmul_strategies.h"
#include "panel_tasks.h"

#include <ATen/ATen.h>

#include <numeric>

namespace qlgrad::math {
namespace {

constexpr int64_t kSharedPanelRowsMin = 256;
// The depth of a block of panels divided by columns: a panel (32 KiB) stays in L1 while 12 rows
// at a time run against it.
constexpr int64_t kColumnTaskDepth = 256;
// The depth of a block of shared panels (a panel is 128 KiB, in L2). Each block's sums are added
// to the output: deeper blocks add fewer times. Measured on a Zen 5 EPYC at 256 x 768 x 3072,
// 2048 x 768 x 3072 and 256 x 4096 x 4096: 1024 rows 1.05-1.16x oneDNN's fp32 GEMM, 512 rows
// 1.05-1.17x, 256 rows 1.07-1.25x.
constexpr int64_t kSharedDepth = 1024;
// Columns a thread takes at once when dividing by columns (their panels, 1 MiB, stay in L2), and
// the pieces in which shared panels are converted.
constexpr int64_t kBlockColumns = 1024;

// What the panel GEMM multiplies in, named by lhs's packed element: float32; pairs of bfloat16
// along the depth (the kernel's products take two at once), which the packed rows and the panels
// then hold in [depth / 2][width][2], an odd depth padded with a zero row; or quads of int8
// values (panels of uint8, each value plus 128) in [depth / 4][width][4], with int32 sums.
template <typename Element>
struct PanelArithmetic;

template <>
struct PanelArithmetic<float> {
  static constexpr int64_t kPair = 1;
  using Panel = float;
  using Sum = float;
  static PanelRowsFn* kernel() { return kernels().panel_rows; }
  static PackRowsFn<float>* packer() { return kernels().pack_rows; }
};

template <>
struct PanelArithmetic<at::BFloat16> {
  static constexpr int64_t kPair = 2;
  using Panel = at::BFloat16;
  using Sum = float;
  static PanelRowsBFloat16Fn* kernel() { return kernels().panel_rows_bfloat16; }
  static PackRowsFn<at::BFloat16>* packer() { return kernels().pack_rows_bfloat16; }
};

template <>
struct PanelArithmetic<int8_t> {
  static constexpr int64_t kPair = 4;
  using Panel = uint8_t;
  using Sum = int32_t;
  static PanelRowsInt8Fn* kernel() { return kernels().panel_rows_int8; }
  static PackRowsFn<int8_t>* packer() { return kernels().pack_rows_int8; }
};

// lhs [rows, depth] (in Element, or float32 for bfloat16 products) times the weight's scale (per
// row of the weight, or one for all, or none) as blocks of kKernelRows rows, each
// [depth][kKernelRows] (zero past the last row), once for all threads: the kernel reads a step's
// 12 factors from one or two cache lines, where 12 rows of lhs a power of two apart would compete
// for the same L1 sets.
template <typename Source, typename Element>
at::Tensor pack_rows(const at::Tensor& lhs, const std::optional<at::Tensor>& scale, PackRowsFn<Source, Element>* pack) {
  constexpr int64_t kPair = PanelArithmetic<Element>::kPair;
  const int64_t rows = lhs.size(0), depth = lhs.size(1), stored_depth = round_up(depth, kPair);
  at::Tensor packed = at::empty({(rows + kKernelRows - 1) / kKernelRows, stored_depth, kKernelRows},
                                lhs.options().dtype(c10::CppTypeToScalarType<Element>::value));
  const Source* source = lhs.const_data_ptr<Source>();
  const float* factors = scale ? scale->const_data_ptr<float>() : nullptr;
  const int64_t factor_stride = scale && scale->numel() > 1 ? 1 : 0;
  Element* destination = packed.mutable_data_ptr<Element>();
  at::parallel_for(0, packed.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      pack(source + block * kKernelRows * depth, depth, std::min(kKernelRows, rows - block * kKernelRows), depth,
           factors, factor_stride, destination + block * kKernelRows * stored_depth);
    }
  });
  return packed;
}

template <typename Element>
at::Tensor pack_rows(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  if constexpr (std::is_same_v<Element, at::BFloat16>) {
    if (lhs.scalar_type() == at::kFloat) {
      return pack_rows(lhs, scale, kernels().pack_float_rows_bfloat16);
    }
  }
  return pack_rows(lhs, scale, PanelArithmetic<Element>::packer());
}

// The depth blocks of a reader's weight, `depth` rows deep or a little more (at most
// depth_block_max(depth, alignment)), starting at multiples of `alignment`: calls
// each(block, top, height) in order.
template <typename Each>
void for_each_depth_block(const WeightReader& reader, int64_t depth, int64_t alignment, const Each& each) {
  const int64_t blocks = (reader.depth() + depth - 1) / depth;
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

// result[:, first:first + count] = lhs @ W[:, first:first + count], on one thread, with room
// in `panels` for depth_block_max(kColumnTaskDepth) x count elements.
template <typename Element, typename Arithmetic = PanelArithmetic<Element>>
void panel_gemm_columns(const Element* packed_lhs, int64_t rows, const WeightReader& reader, int64_t alignment,
                        int64_t first, int64_t count, typename Arithmetic::Sum* out, int64_t ldo,
                        typename Arithmetic::Panel* panels) {
  constexpr int64_t kPair = Arithmetic::kPair;
  const int64_t depth = round_up(reader.depth(), kPair);
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t row_step = round_up((rows + row_blocks - 1) / row_blocks, kKernelRows);
  const auto panel_rows = Arithmetic::kernel();
  for_each_depth_block(reader, kColumnTaskDepth, alignment, [&](int64_t block, int64_t top, int64_t height) {
    reader.panels(top, first, height, count, panels);
    const int64_t panel_depth = round_up(height, kPair);
    // Rows a block at a time, whose slice of lhs stays in L2 across the panels.
    for (int64_t row_first = 0; row_first < rows; row_first += row_step) {
      const int64_t row_last = std::min(rows, row_first + row_step);
      for (int64_t column = 0; column < count; column += kPanelColumns) {
        for (int64_t row = row_first; row < row_last; row += kKernelRows) {
          panel_rows(std::min(kKernelRows, row_last - row), packed_lhs + (row * depth + top * kKernelRows),
                     panels + column * panel_depth, panel_depth, out + row * ldo + first + column, ldo, count - column,
                     /*accumulate=*/block > 0);
        }
      }
    }
  });
}

template <typename Element>
at::Tensor panel_gemm_in(const at::Tensor& lhs, const WeightReader& reader, const std::optional<at::Tensor>& scale) {
  using Arithmetic = PanelArithmetic<Element>;
  using Panel = typename Arithmetic::Panel;
  using Sum = typename Arithmetic::Sum;
  constexpr int64_t kPair = Arithmetic::kPair;
  const int64_t rows = lhs.size(0), depth = round_up(reader.depth(), kPair), columns = reader.columns();
  const int64_t alignment = std::lcm(reader.row_alignment(), kPair);
  const at::Tensor packed_lhs = pack_rows<Element>(lhs, scale);
  const Element* packed = packed_lhs.const_data_ptr<Element>();
  const at::TensorOptions panel_options = lhs.options().dtype(c10::CppTypeToScalarType<Panel>::value);
  auto result = at::empty({rows, columns}, lhs.options().dtype(c10::CppTypeToScalarType<Sum>::value));
  Sum* out = result.template mutable_data_ptr<Sum>();
  const int64_t chunk = columns_per_task(columns, kBlockColumns, kPanelColumns);
  const int64_t chunks = (columns + chunk - 1) / chunk;
  if (rows < kSharedPanelRowsMin) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      at::Tensor panels = at::empty({depth_block_max(kColumnTaskDepth, alignment) * chunk}, panel_options);
      for (int64_t piece = begin; piece < end; ++piece) {
        panel_gemm_columns(packed, rows, reader, alignment, piece * chunk, std::min(chunk, columns - piece * chunk),
                           out, columns, panels.template mutable_data_ptr<Panel>());
      }
    });
    return result;
  }
  // Two parallel regions per depth block (packing lhs a block at a time would cost a third,
  // measured slower than packing it once).
  at::Tensor shared_panels =
      at::empty({depth_block_max(kSharedDepth, alignment) * round_up(columns, kPanelColumns)}, panel_options);
  Panel* panels = shared_panels.template mutable_data_ptr<Panel>();
  const PanelTasks tasks(rows, columns, chunk);
  const auto panel_rows = Arithmetic::kernel();
  for_each_depth_block(reader, kSharedDepth, alignment, [&](int64_t block, int64_t top, int64_t height) {
    const int64_t panel_depth = round_up(height, kPair);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t piece = begin; piece < end; ++piece) {
        const int64_t first = piece * chunk;
        reader.panels(top, first, height, std::min(chunk, columns - first), panels + first * panel_depth);
      }
    });
    at::parallel_for(0, tasks.size(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const PanelTask task = tasks[index];
        panel_rows(task.rows, packed + (task.row * depth + top * kKernelRows), panels + task.column * panel_depth,
                   panel_depth, out + task.row * columns + task.column, columns, task.columns,
                   /*accumulate=*/block > 0);
      }
    });
  });
  return result;
}

} // namespace

at::Tensor panel_gemm(const at::Tensor& lhs, const WeightReader& reader, const std::optional<at::Tensor>& scale,
                      std::optional<at::ScalarType> products) {
  TORCH_INTERNAL_ASSERT(!products || *products == lhs.scalar_type() ||
                        (*products == at::kBFloat16 && lhs.scalar_type() == at::kFloat));
  if (products.value_or(lhs.scalar_type()) == at::kBFloat16) {
    return panel_gemm_in<at::BFloat16>(lhs, reader, scale);
  }
  if (lhs.scalar_type() == at::kChar) {
    TORCH_INTERNAL_ASSERT(!scale, "an int8 lhs takes no scale");
    return panel_gemm_in<int8_t>(lhs, reader, scale);
  }
  return panel_gemm_in<float>(lhs, reader, scale);
}

} // namespace qlgrad::math
