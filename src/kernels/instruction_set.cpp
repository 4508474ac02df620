#include "instruction_set.h"

#include <ATen/Version.h>

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qlgrad::math {

InstructionSet instruction_set() {
  static const InstructionSet set = [] {
    // ATen's AVX512 requires AVX512F, BW, VL and DQ, and its AVX2 FMA too: what the kernels of
    // kernels/avx512.h and kernels/avx2.h are compiled for.
    const std::string aten = at::get_cpu_capability();
    if (aten == "AVX512") {
      return InstructionSet::kAvx512;
    }
    if (aten == "AVX2") {
      return InstructionSet::kAvx2;
    }
    return InstructionSet::kDefault;
  }();
  return set;
}

const char* instruction_set_name(InstructionSet set) {
  switch (set) {
    case InstructionSet::kAvx512: return "avx512";
    case InstructionSet::kAvx2: return "avx2";
    case InstructionSet::kDefault: break;
  }
  return "default";
}

namespace {

// Which register of CPUID leaf 7 reports an extension.
enum class Leaf7Register { kEax, kEcx, kEdx };

// Whether the instruction set is AVX-512 and CPUID leaf 7 (`subleaf`) reports the extension in
// `bit` of `reg`, unless the environment variable `variable` is "0" (to test the kernels of
// AVX-512 CPUs without it).
bool has_avx512_extension(const char* variable, unsigned int subleaf, Leaf7Register reg, unsigned int bit) {
  const char* value = std::getenv(variable);
  if (instruction_set() != InstructionSet::kAvx512 || (value != nullptr && std::string(value) == "0")) {
    return false;
  }
#if defined(__x86_64__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, subleaf, &eax, &ebx, &ecx, &edx) == 0) {
    return false;
  }
  const unsigned int bits = reg == Leaf7Register::kEax ? eax : reg == Leaf7Register::kEcx ? ecx : edx;
  return (bits & (1u << bit)) != 0;
#else
  (void)subleaf, (void)reg, (void)bit;
  return false;
#endif
}

} // namespace

bool has_avx512_bf16() {
  static const bool bf16 = has_avx512_extension("QLGRAD_AVX512_BF16", 1, Leaf7Register::kEax, 5);
  return bf16;
}

bool has_avx512_vnni() {
  static const bool vnni = has_avx512_extension("QLGRAD_AVX512_VNNI", 0, Leaf7Register::kEcx, 11);
  return vnni;
}

bool has_amx() {
  static const bool amx = [] {
    // AMX-BF16, AMX-TILE and AMX-INT8: bits 22, 24 and 25 of EDX. The AMX kernels use AVX512-VBMI
    // too (bit 1 of ECX), which every CPU with AMX tiles has.
    if (!has_avx512_bf16() || !has_avx512_vnni() || !has_avx512_extension("QLGRAD_AMX", 0, Leaf7Register::kEcx, 1) ||
        !has_avx512_extension("QLGRAD_AMX", 0, Leaf7Register::kEdx, 22) ||
        !has_avx512_extension("QLGRAD_AMX", 0, Leaf7Register::kEdx, 24) ||
        !has_avx512_extension("QLGRAD_AMX", 0, Leaf7Register::kEdx, 25)) {
      return false;
    }
#if defined(__x86_64__) && defined(__linux__)
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: without it the first tile instruction faults.
    constexpr int kRequestPermission = 0x1023, kTileData = 18;
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
    return false;
#endif
  }();
  return amx;
}

namespace {

// The vendor named by CPUID leaf 0 (EBX, EDX, ECX), or an empty string.
std::string cpu_vendor() {
#if defined(__x86_64__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) != 0) {
    char vendor[12];
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::string(vendor, sizeof(vendor));
  }
#endif
  return {};
}

} // namespace

bool measured_choice(const char* variable, bool measured) {
  const char* value = std::getenv(variable);
  if (const std::string forced = value != nullptr ? value : ""; forced == "0" || forced == "1") {
    return forced == "1";
  }
  return measured;
}

bool is_intel_cpu() {
  static const bool intel = cpu_vendor() == "GenuineIntel";
  return intel;
}

int amd_cpu_family() {
  static const int family = [] {
#if defined(__x86_64__)
    // Leaf 1's EAX: the base family in bits 8-11, the extended family (added where the base is
    // 0xF, as on every AMD CPU since 2003) in bits 20-27.
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (cpu_vendor() == "AuthenticAMD" && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0) {
      const int base = static_cast<int>((eax >> 8) & 0xF);
      return base == 0xF ? base + static_cast<int>((eax >> 20) & 0xFF) : base;
    }
#endif
    return 0;
  }();
  return family;
}

} // namespace qlgrad::math
