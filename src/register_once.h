#pragma once
// Operator registration that runs once per process, whatever the number of copies of
// libqlgrad loaded (another wheel, a copy at another path). TORCH_LIBRARY throws from a
// static initializer when a namespace is defined twice, which terminates the process; here
// every block of a later copy is skipped once an earlier copy has defined qlgrad's ops.

#include <torch/library.h>

#include <optional>

namespace qlgrad::detail {

class RegisterOnce {
 public:
  using Body = void(torch::Library&);
  RegisterOnce(torch::Library::Kind kind, const char* ns, std::optional<c10::DispatchKey> key, Body* body,
               const char* file, uint32_t line);

 private:
  std::optional<torch::Library> library_;
};

} // namespace qlgrad::detail

#define QLGRAD_REGISTER_ONCE_(kind, ns, key, m, uid)                                                \
  static void C10_CONCATENATE(qlgrad_register_, uid)(torch::Library&);                              \
  static const qlgrad::detail::RegisterOnce C10_CONCATENATE(qlgrad_register_once_, uid)(            \
      torch::Library::kind, #ns, key, &C10_CONCATENATE(qlgrad_register_, uid), __FILE__, __LINE__); \
  static void C10_CONCATENATE(qlgrad_register_, uid)(torch::Library & m)

// TORCH_LIBRARY and TORCH_LIBRARY_IMPL, run by the first copy of libqlgrad in the process only.
#define QLGRAD_LIBRARY_ONCE(ns, m) QLGRAD_REGISTER_ONCE_(DEF, ns, std::nullopt, m, C10_UID)
#define QLGRAD_LIBRARY_IMPL_ONCE(ns, key, m) QLGRAD_REGISTER_ONCE_(IMPL, ns, c10::DispatchKey::key, m, C10_UID)
