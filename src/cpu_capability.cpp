#include "cpu_capability.h"

#include <qlgrad/qlgrad.h>

#include <ATen/Version.h>

#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace qlgrad {
namespace math {

CpuCapability cpu_capability() {
  static const CpuCapability capability = [] {
#if defined(__x86_64__)
    // ATen's AVX512 requires AVX512F, BW, VL and DQ, and its AVX2 FMA too: what qlgrad's kernels use.
    const std::string aten = at::get_cpu_capability();
    if (aten == "AVX512") {
      return CpuCapability::kAvx512;
    }
    if (aten == "AVX2") {
      return CpuCapability::kAvx2;
    }
#endif
    return CpuCapability::kDefault;
  }();
  return capability;
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

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kAvx512: return "avx512";
    case CpuCapability::kAvx2: return "avx2";
    case CpuCapability::kDefault: break;
  }
  return "default";
}

} // namespace math

const char* cpu_capability() {
  return math::cpu_capability_name(math::cpu_capability());
}

} // namespace qlgrad
