#include "cpu_capability.h"

#include <qlgrad/qlgrad.h>

#include <ATen/Version.h>

#include <string>

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
