#pragma once
// Calls of registered operators through the dispatcher, by name.

#include <ATen/core/dispatch/Dispatcher.h>

namespace qlgrad::detail {

// The typed handle of operator `name` (overload ""); Fn is its C++ signature, argument for
// argument. Callers keep it in a function-local static: looking it up takes a lock.
template <typename Fn>
c10::TypedOperatorHandle<Fn> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

} // namespace qlgrad::detail
