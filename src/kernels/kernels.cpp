#include "kernels.h"

#include "variants.h"

namespace qlgrad::math {
namespace {

Kernels portable_kernels() {
  Kernels table{};
  table.instruction_set = InstructionSet::kDefault;
  table.stream_int8 = &stream_int8_portable;
  table.stream_int8_vector_groups = &stream_int8_portable;
  table.stream_float16 = &stream_float16_portable;
  table.convert_codes_float = &convert_codes_float_portable;
  table.convert_codes_bfloat16 = &convert_codes_bfloat16_portable;
  table.copy_blocked = &copy_blocked_portable;
  table.quantize_rows = &quantize_rows_portable;
  table.quantize_rows_symmetric = &quantize_rows_symmetric_portable;
  table.quantize_rows_symmetric_bfloat16 = &quantize_rows_symmetric_bfloat16_portable;
  table.quant_dequant_rows_asymmetric = &quant_dequant_rows_asymmetric_portable;
  table.quant_dequant_rows_asymmetric_bfloat16 = &quant_dequant_rows_asymmetric_bfloat16_portable;
  // ATen's portable int4 kernel packs rows two by two; off x86-64, its packing is not read.
#if defined(__x86_64__)
  table.int4_packing = {32, false};
#else
  table.int4_packing = {0, false};
#endif
  return table;
}

#if defined(__x86_64__)
Kernels avx2_kernels() {
  Kernels table = portable_kernels();
  table.instruction_set = InstructionSet::kAvx2;
  table.stream_int8 = &stream_int8_avx2;
  table.stream_int8_vector_groups = &stream_int8_avx2;
  table.stream_float16 = &stream_float16_avx2;
  table.convert_codes_float = &convert_codes_float_avx2;
  table.convert_codes_bfloat16 = &convert_codes_bfloat16_avx2;
  table.quantize_rows = &quantize_rows_avx2;
  table.quantize_rows_symmetric = &quantize_rows_symmetric_avx2;
  table.quantize_rows_symmetric_bfloat16 = &quantize_rows_symmetric_bfloat16_avx2;
  table.quant_dequant_rows_asymmetric = &quant_dequant_rows_asymmetric_avx2;
  table.quant_dequant_rows_asymmetric_bfloat16 = &quant_dequant_rows_asymmetric_bfloat16_avx2;
  table.int4_packing = {32, true};
  return table;
}

Kernels avx512_kernels() {
  Kernels table = avx2_kernels();
  table.instruction_set = InstructionSet::kAvx512;
  table.quantize_rows = &quantize_rows_avx512;
  table.quantize_rows_symmetric = &quantize_rows_symmetric_avx512;
  table.quantize_rows_symmetric_bfloat16 = &quantize_rows_symmetric_bfloat16_avx512;
  table.quant_dequant_rows_asymmetric = &quant_dequant_rows_asymmetric_avx512;
  table.quant_dequant_rows_asymmetric_bfloat16 = &quant_dequant_rows_asymmetric_bfloat16_avx512;
  table.stream_int8 = &stream_int8_avx512;
  table.stream_int8_vector_groups = &stream_int8_vectors_avx512;
  table.stream_float16 = &stream_float16_vectors_avx512;
  table.convert_codes_float = &convert_codes_float_avx512;
  table.convert_codes_bfloat16 = &convert_codes_bfloat16_avx512;
  table.copy_blocked = &copy_blocked_avx512;
  table.int4_packing = {64, true};
  table.panel_rows = &panel_rows_avx512;
  table.pack_rows = &pack_rows_avx512;
  table.rescale_sums = &rescale_sums_avx512;
  table.rescale_sums_bfloat16 = &rescale_sums_bfloat16_avx512;
  table.convert_panels_int8 = &convert_panels_int8_avx512;
  table.blocked_float_panels = &blocked_float_panels_avx512;
  table.convert_panels_float16 = &convert_panels_float16_avx512;
  table.convert_transposed_panels_int8 = &convert_transposed_panels_int8_avx512;
  table.int4_panels = &int4_panels_avx512;
  table.int4_transposed_panels = &int4_transposed_panels_avx512;
  table.int4_stream = &int4_stream_avx512;
  table.stream_blocked = &stream_blocked_avx512;
  if (has_avx512_bf16()) {
    table.panel_rows_bfloat16 = &panel_rows_bfloat16_avx512;
    table.pack_rows_bfloat16 = &pack_rows_bfloat16_avx512;
    table.pack_float_rows_bfloat16 = &pack_float_rows_bfloat16_avx512;
    table.split_three_bfloat16 = &split_three_bfloat16_avx512;
    table.convert_panels_int8_bfloat16 = &convert_panels_int8_bfloat16_avx512;
    table.convert_panels_float16_bfloat16 = &convert_panels_float16_bfloat16_avx512;
    table.convert_transposed_panels_int8_bfloat16 = &convert_transposed_panels_int8_bfloat16_avx512;
    table.int4_panels_bfloat16 = &int4_panels_bfloat16_avx512;
    table.pack_code_rows_bfloat16 = &pack_code_rows_bfloat16_avx512;
    table.pack_panel_bfloat16 = &pack_panel_bfloat16_avx512;
    table.store_transposed_bfloat16 = &store_transposed_bfloat16_avx512;
    table.int4_transposed_panels_bfloat16 = &int4_transposed_panels_bfloat16_avx512;
  }
  if (has_avx512_vnni()) {
    table.panel_rows_int8 = &panel_rows_int8_avx512_vnni;
    table.pack_rows_int8 = &pack_rows_int8_avx512_vnni;
    table.int8_panels = &int8_panels_avx512_vnni;
    table.int8_transposed_panels = &int8_transposed_panels_avx512_vnni;
    table.blocked_int8_panels = &blocked_int8_panels_avx512;
    table.int8_row_sums = &int8_row_sums_avx512_vnni;
    table.weight_rows_int8 = &weight_rows_int8_avx512_vnni;
    table.transpose_sums = &transpose_sums_avx512_vnni;
    table.quantize_rows_asymmetric = &quantize_rows_asymmetric_avx512;
    table.quantize_rows_asymmetric_bfloat16 = &quantize_rows_asymmetric_bfloat16_avx512;
    table.grouped_int8_panels = &grouped_int8_panels_avx512_vnni;
    table.panel_rows_grouped_int8 = &panel_rows_grouped_int8_avx512_vnni;
  }
  if (has_amx()) {
    table.configure_tiles_amx = &configure_tiles_amx;
    table.panel_rows_bfloat16_amx = &panel_rows_bfloat16_amx;
    table.pack_rows_bfloat16_amx = &pack_rows_bfloat16_amx;
    table.pack_float_rows_bfloat16_amx = &pack_float_rows_bfloat16_amx;
    table.panel_rows_int8_amx = &panel_rows_int8_amx;
    table.pack_rows_int8_amx = &pack_rows_int8_amx;
    table.convert_row_tiles_int8_bfloat16_amx = &convert_row_tiles_int8_bfloat16_amx;
    table.convert_row_tiles_int4_bfloat16_amx = &convert_row_tiles_int4_bfloat16_amx;
    table.weight_rows_bfloat16_amx = &weight_rows_bfloat16_amx;
  }
  return table;
}
#endif

Kernels chosen_kernels() {
#if defined(__x86_64__)
  switch (instruction_set()) {
    case InstructionSet::kAvx512: return avx512_kernels();
    case InstructionSet::kAvx2: return avx2_kernels();
    case InstructionSet::kDefault: break;
  }
#endif
  return portable_kernels();
}

} // namespace

const Kernels& kernels() {
  static const Kernels table = chosen_kernels();
  return table;
}

} // namespace qlgrad::math
