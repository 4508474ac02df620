#pragma once
// Declarations in place of asmjit's, which torch's wheels leave out although fbgemm's headers
// (fbgemm/SimdUtils.h, reached from ATen/native/quantized/cpu/fbgemm_utils.h) include them.
// Those headers only name asmjit's register types in aliases; qlgrad reads fbgemm's packed
// weights and never generates code, so no definition is needed. The version is below every
// asmjit release, which selects the plain aliases in fbgemm/SimdUtils.h.

#define ASMJIT_LIBRARY_MAKE_VERSION(major, minor, patch) (((major) << 16) | ((minor) << 8) | (patch))
#define ASMJIT_LIBRARY_VERSION 0
