// The Python module qlgrad._C: the only translation unit that knows Python.

#include <qlgrad/qlgrad.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
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

// c10 errors become the Python exceptions torch raises for them, without the C++ backtrace.
void translate_c10_error(const std::exception_ptr& error, void* /*payload*/) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  }
}

std::optional<qlgrad::Precision> parse_optional(const std::optional<std::string>& name) {
  return name ? std::optional(qlgrad::parse_precision(*name)) : std::nullopt;
}

// A `with` block that sets the backward precision of the current thread.
class PrecisionScope {
 public:
  explicit PrecisionScope(const std::string& name) : precision_(qlgrad::parse_precision(name)) {}
  void enter() { guard_.emplace(precision_); }
  void exit() { guard_.reset(); }

 private:
  qlgrad::Precision precision_;
  std::optional<qlgrad::BackwardPrecisionGuard> guard_;
};

} // namespace

NB_MODULE(_C, m) {
  m.doc() = "Native entry points of qlgrad.";
  nb::register_exception_translator(&translate_c10_error);

  m.def(
      "linear_int8_backward",
      [](const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& scale,
         const std::optional<at::Tensor>& zero_point, const std::optional<std::string>& precision) {
        return qlgrad::linear_int8_backward(grad_output, weight, scale, zero_point, parse_optional(precision));
      },
      nb::arg("grad_output"), nb::arg("weight"), nb::arg("scale"), nb::arg("zero_point") = nb::none(),
      nb::arg("precision") = nb::none(), nb::call_guard<nb::gil_scoped_release>(),
        "Input gradient of an int8 linear layer on plain tensors:\n"
        "``grad_output @ (scale * (weight - zero_point))``.\n\n"
        "weight: int8 [N, K]. scale: floating, 1 element (per tensor) or [N] (per\n"
        "output channel). zero_point: integer, shaped like scale; None for a\n"
        "symmetric weight. grad_output: floating [..., N]; the result has its dtype\n"
        "and shape [..., K]. Differentiable with respect to grad_output (scale and\n"
        "zero_point are constants). precision: 'fp32', 'bf16' or 'int8'; None for\n"
        "the one in effect on this thread.");

  m.def(
      "set_backward_precision", [](const std::string& name) { qlgrad::set_backward_precision(qlgrad::parse_precision(name)); },
      nb::arg("name"), "Set the process-wide backward precision: 'fp32', 'bf16' or 'int8'.");
  m.def(
      "get_backward_precision", [] { return std::string(qlgrad::precision_name(qlgrad::backward_precision())); },
      "The backward precision in effect on this thread.");
  nb::class_<PrecisionScope>(m, "backward_precision",
                             "Context manager: the backward precision of this thread inside a with block.\n"
                             "Layers record it when their forward runs.")
      .def(nb::init<const std::string&>(), nb::arg("name"))
      .def("__enter__", [](PrecisionScope& scope) { scope.enter(); })
      .def("__exit__", [](PrecisionScope& scope, nb::args) { scope.exit(); });

  m.def(
      "cache_info",
      [] {
        const auto info = qlgrad::cache_info();
        return std::make_tuple(info.entries, info.bytes, info.hits, info.misses, info.limit_bytes);
      },
      "Statistics of the backward-weight cache: (entries, bytes, hits, misses, limit_bytes).");
  m.def("clear_cache", &qlgrad::clear_cache,
        "Drop every cached backward weight and reset the hit and miss counters.");
  m.def("set_cache_limit", &qlgrad::set_cache_limit, nb::arg("nbytes"),
        "Bound the backward-weight cache to nbytes (0 disables it); evicts at once.");
}
