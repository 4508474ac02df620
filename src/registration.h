#pragma once
// Operator registration that tolerates a second copy of libqlgrad in one process
// (another wheel, a copy at another path). TORCH_LIBRARY throws from a static
// initializer when a namespace is defined twice, which terminates the process; here
// every block of a copy is skipped when an earlier copy already defined qlgrad's ops.

#include <torch/library.h>

#include <optional>

namespace qlgrad::detail {

class Registration {
 public:
  using Body = void(torch::Library&);
  Registration(torch::Library::Kind kind, const char* ns, std::optional<c10::DispatchKey> key,
               Body* body, const char* file, uint32_t line);

 private:
  std::optional<torch::Library> library_;
};

} // namespace qlgrad::detail

#define QLGRAD_REGISTRATION_(kind, ns, key, m, uid)                                   \
  static void C10_CONCATENATE(qlgrad_register_, uid)(torch::Library&);                \
  static const qlgrad::detail::Registration C10_CONCATENATE(qlgrad_registration_, uid)( \
      torch::Library::kind, #ns, key, &C10_CONCATENATE(qlgrad_register_, uid), __FILE__, __LINE__); \
  static void C10_CONCATENATE(qlgrad_register_, uid)(torch::Library & m)

// Drop-in replacements for TORCH_LIBRARY and TORCH_LIBRARY_IMPL.
#define QLGRAD_LIBRARY(ns, m) QLGRAD_REGISTRATION_(DEF, ns, std::nullopt, m, C10_UID)
#define QLGRAD_LIBRARY_IMPL(ns, key, m) \
  QLGRAD_REGISTRATION_(IMPL, ns, c10::DispatchKey::key, m, C10_UID)
