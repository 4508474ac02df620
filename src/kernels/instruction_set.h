#pragma once
// The instruction set of qlgrad's kernels: ATen's CPU capability, which ATEN_CPU_CAPABILITY may
// set below what the CPU has (a value above it falls back, as ATen decides), so that one variable
// chooses ATen's kernels and qlgrad's alike. qlgrad::cpu_capability() reports its name.

namespace qlgrad::math {

// In increasing order: each set's kernels run on every CPU of the ones after it.
enum class InstructionSet { kDefault, kAvx2, kAvx512 };

// Found once per process, as ATen finds its own capability.
InstructionSet instruction_set();

// "default", "avx2" or "avx512".
const char* instruction_set_name(InstructionSet set);

// Whether the instruction set is AVX-512 and the CPU has AVX512-BF16 (bfloat16 dot products,
// vdpbf16ps), unless QLGRAD_AVX512_BF16=0 leaves them out (to test the kernels of AVX-512 CPUs
// without them).
bool has_avx512_bf16();

// Whether the instruction set is AVX-512 and the CPU has AVX512-VNNI (int8 dot products,
// vpdpbusd), unless QLGRAD_AVX512_VNNI=0 leaves them out.
bool has_avx512_vnni();

// Whether the instruction set is AVX-512 with AVX512-BF16 and AVX512-VNNI (has_avx512_bf16 and
// has_avx512_vnni) and the CPU has AMX tiles with bfloat16 and int8 products (and AVX512-VBMI,
// which every CPU with them has), which the operating system lets this process use (Linux grants
// the tiles' state on request, asked for here once), unless QLGRAD_AMX=0 leaves them out (to test
// the kernels of AVX-512 CPUs without them).
bool has_amx();

// Whether the CPU is Intel's: MKL, torch's float GEMM, runs its AVX-512 code there only (on AMD
// CPUs with AVX-512 it takes its AVX2 path, at less than half oneDNN's speed).
bool is_intel_cpu();

// The family of an AMD CPU as CPUID reports it (0x19 for Zen 3 and Zen 4, 0x1A for Zen 5), or 0
// for other vendors' CPUs.
int amd_cpu_family();

// A kernel choice measured per CPU (`measured`), which the environment variable `variable` forces
// on any CPU: "1" takes it, "0" leaves it, so that the tests take both paths on every machine.
// Read once per choice: callers keep the answer in a static.
bool measured_choice(const char* variable, bool measured);

// AMD's families of Zen 4 (with Zen 3, which has no AVX-512) and of Zen 5, whose 512-bit units
// multiply twice as fast a cycle as a Zen 4's from caches and memory that did not double: where
// the kernel choices measured on each differ, they follow the family.
constexpr int kAmdZen4Family = 0x19, kAmdZen5Family = 0x1A;

} // namespace qlgrad::math
