#pragma once
// Each instruction set's kernels, defined in the kernel file named after their concern and set
// (streams_avx2.cpp, ...): kernels.cpp puts those of the set in use into the table; no one else
// calls them by name, but for an AVX-512 kernel that hands its margins to the portable one.

#include "kernels.h"

namespace qlgrad::math {

// Portable, compiled for the baseline of the target.
StreamFn<int8_t> stream_int8_portable;
StreamFn<at::Half> stream_float16_portable;
ConvertCodesFn<float> convert_codes_float_portable;
ConvertCodesFn<at::BFloat16> convert_codes_bfloat16_portable;
CopyBlockedFn copy_blocked_portable;
QuantizeRowsFn quantize_rows_portable;
QuantizeRowsSymmetricFn<float> quantize_rows_symmetric_portable;
QuantizeRowsSymmetricFn<at::BFloat16> quantize_rows_symmetric_bfloat16_portable;
QuantDequantRowsFn<float> quant_dequant_rows_asymmetric_portable;
QuantDequantRowsFn<at::BFloat16> quant_dequant_rows_asymmetric_bfloat16_portable;

// AVX2 (x86-64 only).
StreamFn<int8_t> stream_int8_avx2;
StreamFn<at::Half> stream_float16_avx2;
ConvertCodesFn<float> convert_codes_float_avx2;
ConvertCodesFn<at::BFloat16> convert_codes_bfloat16_avx2;
QuantizeRowsFn quantize_rows_avx2;
QuantizeRowsSymmetricFn<float> quantize_rows_symmetric_avx2;
QuantizeRowsSymmetricFn<at::BFloat16> quantize_rows_symmetric_bfloat16_avx2;
QuantDequantRowsFn<float> quant_dequant_rows_asymmetric_avx2;
QuantDequantRowsFn<at::BFloat16> quant_dequant_rows_asymmetric_bfloat16_avx2;

// AVX-512 (x86-64 only).
QuantizeRowsFn quantize_rows_avx512;
QuantizeRowsSymmetricFn<float> quantize_rows_symmetric_avx512;
QuantizeRowsSymmetricFn<at::BFloat16> quantize_rows_symmetric_bfloat16_avx512;
QuantDequantRowsFn<float> quant_dequant_rows_asymmetric_avx512;
QuantDequantRowsFn<at::BFloat16> quant_dequant_rows_asymmetric_bfloat16_avx512;
QuantizeRowsAsymmetricFn<float> quantize_rows_asymmetric_avx512;
QuantizeRowsAsymmetricFn<at::BFloat16> quantize_rows_asymmetric_bfloat16_avx512;
StreamFn<int8_t> stream_int8_avx512;
StreamFn<int8_t> stream_int8_vectors_avx512;
StreamFn<at::Half> stream_float16_vectors_avx512;
ConvertCodesFn<float> convert_codes_float_avx512;
ConvertCodesFn<at::BFloat16> convert_codes_bfloat16_avx512;
CopyBlockedFn copy_blocked_avx512;
BlockedInt8PanelsFn blocked_int8_panels_avx512;
BlockedFloatPanelsFn blocked_float_panels_avx512;
PanelRowsFn panel_rows_avx512;
PackRowsFn<float> pack_rows_avx512;
RescaleSumsFn<float> rescale_sums_avx512;
RescaleSumsFn<at::BFloat16> rescale_sums_bfloat16_avx512;
ConvertPanelsFn<int8_t> convert_panels_int8_avx512;
ConvertPanelsFn<at::Half> convert_panels_float16_avx512;
ConvertTransposedPanelsFn<float> convert_transposed_panels_int8_avx512;
Int4PanelsFn int4_panels_avx512;
Int4PanelsFn int4_transposed_panels_avx512;
Int4StreamFn int4_stream_avx512;
BlockedStreamFn stream_blocked_avx512;

// AVX512-BF16 (x86-64 only).
PanelRowsBFloat16Fn panel_rows_bfloat16_avx512;
PackRowsFn<at::BFloat16> pack_rows_bfloat16_avx512;
PackRowsFn<float, at::BFloat16> pack_float_rows_bfloat16_avx512;
SplitThreeBFloat16Fn split_three_bfloat16_avx512;
ConvertPanelsBFloat16Fn<int8_t> convert_panels_int8_bfloat16_avx512;
ConvertPanelsBFloat16Fn<at::Half> convert_panels_float16_bfloat16_avx512;
ConvertTransposedPanelsFn<at::BFloat16> convert_transposed_panels_int8_bfloat16_avx512;
Int4PanelsBFloat16Fn int4_panels_bfloat16_avx512;
Int4PanelsBFloat16Fn int4_transposed_panels_bfloat16_avx512;
PackCodeRowsFn pack_code_rows_bfloat16_avx512;
PackPanelFn pack_panel_bfloat16_avx512;
StoreTransposedFn store_transposed_bfloat16_avx512;

// AVX512-VNNI (x86-64 only).
PanelRowsInt8Fn panel_rows_int8_avx512_vnni;
PackRowsFn<int8_t> pack_rows_int8_avx512_vnni;
Int8PanelsFn int8_panels_avx512_vnni;
Int8TransposedPanelsFn int8_transposed_panels_avx512_vnni;
Int8RowSumsFn int8_row_sums_avx512_vnni;
WeightRowsInt8Fn weight_rows_int8_avx512_vnni;
TransposeSumsFn transpose_sums_avx512_vnni;
GroupedInt8PanelsFn grouped_int8_panels_avx512_vnni;
GroupedInt8PanelRowsFn panel_rows_grouped_int8_avx512_vnni;

// AMX (x86-64 only).
ConfigureTilesFn configure_tiles_amx;
PanelRowsAmxFn<at::BFloat16, at::BFloat16, float> panel_rows_bfloat16_amx;
PackRowsFn<at::BFloat16> pack_rows_bfloat16_amx;
PackRowsFn<float, at::BFloat16> pack_float_rows_bfloat16_amx;
PanelRowsAmxFn<int8_t, uint8_t, int32_t> panel_rows_int8_amx;
PackRowsFn<int8_t> pack_rows_int8_amx;
ConvertRowTilesFn convert_row_tiles_int8_bfloat16_amx;
ConvertInt4RowTilesFn convert_row_tiles_int4_bfloat16_amx;
PanelRowsAmxFn<at::BFloat16, at::BFloat16, float> weight_rows_bfloat16_amx;

} // namespace qlgrad::math
