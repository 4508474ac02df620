// The Python module qlgrad._C: the only translation unit that knows Python.

#include <qlgrad/qlgrad.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

namespace nb = nanobind;

// torch.Tensor <-> at::Tensor by reference to the same tensor object, so autograd
// identity (requires_grad, grad_fn) survives the crossing in both directions.
namespace nanobind::detail {
template <>
struct type_caster<at::Tensor> {
  NB_TYPE_CASTER(at::Tensor, const_name("torch.Tensor"))

  bool from_python(handle src, uint8_t /*flags*/, cleanup_list* /*cleanup*/) noexcept {
    if (!THPVariable_Check(src.ptr())) {
      return false;
    }
    value = THPVariable_Unpack(src.ptr());
    return true;
  }

  static handle from_cpp(const at::Tensor& tensor, rv_policy /*policy*/, cleanup_list* /*cleanup*/) noexcept {
    return THPVariable_Wrap(tensor);
  }
};
} // namespace nanobind::detail

namespace {

// c10 errors become the Python exceptions torch raises for them (ValueError, TypeError,
// NotImplementedError...), without the C++ backtrace; an error_already_set from a Python
// kernel below the dispatcher (the fake implementation, which meta tensors reach) becomes its
// original exception. Anything else goes on to nanobind's own translation.
void translate_torch_error(const std::exception_ptr& error, void* /*payload*/) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error&) {
    torch::translate_exception_to_python(error);
  } catch (const pybind11::error_already_set&) {
    torch::translate_exception_to_python(error);
  }
}

// 'fp32', 'bf16' or 'int8': the precisions as a Python caller writes them.
std::string quoted_precision_names() {
  std::string names;
  for (size_t i = 0; i < qlgrad::kPrecisions.size(); ++i) {
    names += i == 0 ? "" : i + 1 == qlgrad::kPrecisions.size() ? " or " : ", ";
    names += std::string("'") + qlgrad::precision_name(qlgrad::kPrecisions[i]) + "'";
  }
  return names;
}

// A precision name from Python: any object may arrive, and a non-str one is refused naming
// the argument rather than with nanobind's generic "incompatible function arguments". The
// functions taking one keep, through nb::sig, the signatures their stubs show.
qlgrad::Precision precision_from_python(nb::handle name, const char* argument) {
  TORCH_CHECK_TYPE(nb::isinstance<nb::str>(name), "qlgrad: ", argument, " must be a str (", quoted_precision_names(),
                   "), got ", nb::inst_name(name).c_str());
  return qlgrad::parse_precision(nb::borrow<nb::str>(name).c_str());
}

std::optional<qlgrad::Precision> optional_precision_from_python(nb::handle name, const char* argument) {
  return name.is_none() ? std::nullopt : std::optional(precision_from_python(name, argument));
}

// A cache limit from Python, as the int64 that qlgrad::set_cache_limit takes and bounds.
int64_t cache_limit_from_python(nb::handle nbytes) {
  // Anything with __index__ is an int here (numpy and torch integer scalars too), except bool:
  // an int subclass in Python, but set_cache_limit(True) is a mistake, not 1 byte.
  nb::object value;
  if (!PyBool_Check(nbytes.ptr())) {
    value = nb::steal(PyNumber_Index(nbytes.ptr()));
    PyErr_Clear();  // the refusal below names the argument instead
  }
  TORCH_CHECK_TYPE(value.is_valid(), "qlgrad.set_cache_limit: nbytes must be an int, got ",
                   nb::inst_name(nbytes).c_str());
  int overflow = 0;
  const long long bytes = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  // An int beyond int64 lies beyond qlgrad::kMaxCacheLimitBytes too.
  TORCH_CHECK_VALUE(overflow == 0, "qlgrad.set_cache_limit: nbytes must lie in [0, 2**62] (0 disables the cache), got ",
                    nb::str(value).c_str());
  return bytes;
}

// A `with` block that sets the backward precision of the current thread.
class PrecisionScope {
 public:
  explicit PrecisionScope(nb::handle name) : precision_(precision_from_python(name, "name")) {}
  void enter() { guard_.emplace(precision_); }
  void exit() { guard_.reset(); }

 private:
  qlgrad::Precision precision_;
  std::optional<qlgrad::BackwardPrecisionGuard> guard_;
};

} // namespace

NB_MODULE(_C, m) {
  m.doc() = "Native entry points of qlgrad.";
  nb::register_exception_translator(&translate_torch_error);

  nb::list precisions;
  for (const qlgrad::Precision precision : qlgrad::kPrecisions) {
    precisions.append(qlgrad::precision_name(precision));
  }
  m.attr("PRECISIONS") = nb::tuple(precisions);

  m.def(
      "linear_int8_backward",
      [](const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
         const std::optional<at::Tensor>& zero_point, nb::handle precision) {
        const auto parsed = optional_precision_from_python(precision, "precision");
        nb::gil_scoped_release release;
        return qlgrad::linear_int8_backward(grad_output, weight, scale, zero_point, parsed);
      },
      nb::arg("grad_output"), nb::arg("weight"), nb::arg("scale"), nb::arg("zero_point") = nb::none(),
      nb::arg("precision").none() = nb::none(),
      nb::sig("def linear_int8_backward(grad_output: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, "
              "zero_point: torch.Tensor | None = None, precision: str | None = None) -> torch.Tensor"),
      "Input gradient of an int8 linear layer on plain tensors:\n"
      "``grad_output @ (scale * (weight - zero_point))``.\n\n"
      "weight: int8 [N, K]. scale: floating, 1 element (per tensor), [N] (per\n"
      "output channel) or [N, G] (group-wise: W[n, k] = scale[n, k // (K // G)] *\n"
      "(weight[n, k] - zero_point[n, k // (K // G)]), G dividing K). zero_point:\n"
      "integer, shaped like scale; None for a symmetric weight. grad_output: floating [..., N]; the result has its dtype\n"
      "and shape [..., K]. Differentiable with respect to grad_output (scale and\n"
      "zero_point are constants). precision: one of PRECISIONS; None for the one\n"
      "in effect on this thread.");

  m.def(
      "set_backward_precision",
      [](nb::handle name) { qlgrad::set_backward_precision(precision_from_python(name, "name")); },
      nb::arg("name").none(), nb::sig("def set_backward_precision(name: str) -> None"),
      "Set the process-wide backward precision: one of PRECISIONS.");
  m.def(
      "get_backward_precision", [] { return std::string(qlgrad::precision_name(qlgrad::get_backward_precision())); },
      "The backward precision in effect on this thread.");
  nb::class_<PrecisionScope>(m, "backward_precision",
                             "Context manager: the backward precision of this thread inside a with block.\n"
                             "Layers record it when their forward runs.")
      .def(nb::init<nb::handle>(), nb::arg("name").none(), nb::sig("def __init__(self, name: str) -> None"))
      .def("__enter__", [](PrecisionScope& scope) { scope.enter(); })
      .def("__exit__", [](PrecisionScope& scope, nb::args) { scope.exit(); });

  m.def(
      "cache_info",
      [] {
        const auto info = qlgrad::cache_info();
        return std::make_tuple(info.entries, info.bytes, info.hits, info.misses, info.limit_bytes);
      },
      "Statistics of the backward-weight cache: (entries, bytes, hits, misses, limit_bytes).");
  m.def(
      "cpu_capability", [] { return std::string(qlgrad::cpu_capability()); },
      "The instruction set of qlgrad's kernels: 'default' (portable), 'avx2' or 'avx512'. It is ATen's CPU "
      "capability, which ATEN_CPU_CAPABILITY may lower, as for ATen's own kernels.");
  m.def("clear_cache", &qlgrad::clear_cache, "Drop every cached backward weight and reset the hit and miss counters.");
  m.def(
      "set_cache_limit", [](nb::handle nbytes) { qlgrad::set_cache_limit(cache_limit_from_python(nbytes)); },
      nb::arg("nbytes").none(), nb::sig("def set_cache_limit(nbytes: int) -> None"),
      "Bound the backward-weight cache to nbytes (0 disables it); evicts at once.");
}
