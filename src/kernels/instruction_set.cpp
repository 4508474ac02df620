#include "instruction_set.h"

#include <ATen/Version.h>

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
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

bool has_avx512_bf16() {
  static const bool bf16 = [] {
    const char* variable = std::getenv("QLGRAD_AVX512_BF16");
    if (instruction_set() != InstructionSet::kAvx512 || (variable != nullptr && std::string(variable) == "0")) {
      return false;
    }
#if defined(__x86_64__)
    // Leaf 7, subleaf 1: EAX bit 5.
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 5)) != 0;
#else
    return false;
#endif
  }();
  return bf16;
}

bool has_avx512_vnni() {
  static const bool vnni = [] {
    const char* variable = std::getenv("QLGRAD_AVX512_VNNI");
    if (instruction_set() != InstructionSet::kAvx512 || (variable != nullptr && std::string(variable) == "0")) {
      return false;
    }
#if defined(__x86_64__)
    // Leaf 7, subleaf 0: ECX bit 11.
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 11)) != 0;
#else
    return false;
#endif
  }();
  return vnni;
}

bool is_intel_cpu() {
  static const bool intel = [] {
#if defined(__x86_64__)
    // Leaf 0 names the vendor in EBX, EDX, ECX.
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) != 0) {
      char vendor[12];
      std::memcpy(vendor, &ebx, 4);
      std::memcpy(vendor + 4, &edx, 4);
      std::memcpy(vendor + 8, &ecx, 4);
      return std::memcmp(vendor, "GenuineIntel", 12) == 0;
    }
#endif
    return false;
  }();
  return intel;
}

} // namespace qlgrad::math
