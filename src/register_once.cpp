#include "register_once.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace qlgrad::detail {
namespace {

// Decided once per copy, before that copy registers anything: a later copy finds
// the schema that the first copy defined and stays silent.
bool first_copy_in_process() {
  static const bool first = !c10::Dispatcher::singleton().findSchema({"qlgrad::linear_int8_backward", ""}).has_value();
  return first;
}

} // namespace

RegisterOnce::RegisterOnce(torch::Library::Kind kind, const char* ns, std::optional<c10::DispatchKey> key, Body* body,
                           const char* file, uint32_t line) {
  if (!first_copy_in_process()) {
    return;
  }
  library_.emplace(kind, ns, key, file, line);
  body(*library_);
}

} // namespace qlgrad::detail
