#pragma once
// The instruction set qlgrad's kernels use: ATen's CPU capability, which ATEN_CPU_CAPABILITY
// may set below what the CPU has (a value above it falls back, as ATen decides), so that one
// variable chooses ATen's kernels and qlgrad's alike.

namespace qlgrad::math {

// In increasing order: each capability's kernels run on every CPU of the ones after it.
enum class CpuCapability { kDefault, kAvx2, kAvx512 };

// Found once per process, as ATen finds its own.
CpuCapability cpu_capability();

// Whether the CPU is Intel's: MKL, torch's float GEMM, runs its AVX-512 code there only (on AMD
// CPUs with AVX-512 it takes its AVX2 path, at less than half oneDNN's speed).
bool is_intel_cpu();

// "default", "avx2" or "avx512".
const char* cpu_capability_name(CpuCapability capability);

} // namespace qlgrad::math
