// The Python module qlgrad._C: the only translation unit that knows Python.

#include <qlgrad/qlgrad.h>

#include <sstream>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>
#include <torch/csrc/Dtype.h>
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

// A precision name or None (none chosen, or the thread's choice, as the caller says).
std::optional<qlgrad::Precision> optional_precision_from_python(nb::handle name, const char* argument) {
  TORCH_CHECK_TYPE(name.is_none() || nb::isinstance<nb::str>(name), "qlgrad: ", argument, " must be a str (",
                   quoted_precision_names(), ") or None, got ", nb::inst_name(name).c_str());
  return name.is_none() ? std::nullopt : std::optional(precision_from_python(name, argument));
}

nb::object optional_precision_to_python(std::optional<qlgrad::Precision> precision) {
  if (!precision) {
    return nb::none();
  }
  return nb::str(qlgrad::precision_name(*precision));
}

// A torch.dtype from Python, as the ScalarType it stands for.
at::ScalarType dtype_from_python(nb::handle dtype, const char* argument) {
  TORCH_CHECK_TYPE(THPDtype_Check(dtype.ptr()), "qlgrad: ", argument, " must be a torch.dtype, got ",
                   nb::inst_name(dtype).c_str());
  return reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type;
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
      "integer, shaped like scale; None for a symmetric weight. grad_output: floating\n"
      "[..., N]; the result has its dtype and shape [..., K]. Differentiable with respect\n"
      "to grad_output (scale and zero_point are constants). precision: one of PRECISIONS;\n"
      "None for the one chosen on this thread, else grad_output's dtype's\n"
      "(effective_backward_precision).");

  m.def(
      "set_backward_precision",
      [](nb::handle name) { qlgrad::set_backward_precision(optional_precision_from_python(name, "name")); },
      nb::arg("name").none(), nb::sig("def set_backward_precision(name: str | None) -> None"),
      "Choose the process-wide backward precision: one of PRECISIONS, for gradients of every dtype.\n"
      "None chooses none: backward then follows the gradient's dtype, 'bf16' for bfloat16\n"
      "gradients and 'fp32' for every other dtype (the initial state, unless the environment\n"
      "variable QLGRAD_BACKWARD_PRECISION chose one).");
  m.def(
      "get_backward_precision", [] { return std::string(qlgrad::precision_name(qlgrad::get_backward_precision())); },
      "The backward precision in effect on this thread for float32 gradients: the one chosen\n"
      "(chosen_backward_precision()), else 'fp32', the float32 default; bfloat16 gradients then\n"
      "run 'bf16'.");
  m.def(
      "chosen_backward_precision", [] { return optional_precision_to_python(qlgrad::chosen_backward_precision()); },
      nb::sig("def chosen_backward_precision() -> str | None"),
      "The backward precision chosen on this thread: its backward_precision block, else\n"
      "set_backward_precision's (or QLGRAD_BACKWARD_PRECISION's); None where none was chosen.\n"
      "Layers record it when their forward runs.");
  m.def(
      "effective_backward_precision",
      [](nb::handle chosen, nb::handle dtype) {
        return std::string(qlgrad::precision_name(qlgrad::effective_backward_precision(
            optional_precision_from_python(chosen, "chosen"), dtype_from_python(dtype, "dtype"))));
      },
      nb::arg("chosen").none(), nb::arg("dtype").none(),
      nb::sig("def effective_backward_precision(chosen: str | None, dtype: torch.dtype) -> str"),
      "The backward precision a gradient of dtype `dtype` runs in for the choice `chosen`\n"
      "(chosen_backward_precision() when a layer's forward ran): `chosen`, else 'bf16' for\n"
      "torch.bfloat16 and 'fp32' for every other dtype.");
  nb::class_<PrecisionScope>(m, "backward_precision",
                             "Context manager: the backward precision chosen on this thread inside a with\n"
                             "block, for gradients of every dtype. Layers record it when their forward runs.")
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
  m.def(
      "cpu_extensions",
      [] {
        std::vector<std::string> names;
        std::istringstream words{std::string(qlgrad::cpu_extensions())};
        for (std::string name; words >> name;) {
          names.push_back(name);
        }
        return names;
      },
      "The extensions beyond cpu_capability() that qlgrad's kernels use: those of 'avx512_bf16', "
      "'avx512_vnni' and 'amx' that the CPU has. QLGRAD_AVX512_BF16=0, QLGRAD_AVX512_VNNI=0 and QLGRAD_AMX=0 "
      "leave one out (AMX goes with either of the others).");
  m.def("clear_cache", &qlgrad::clear_cache, "Drop every cached backward weight and reset the hit and miss counters.");
  m.def(
      "set_cache_limit", [](nb::handle nbytes) { qlgrad::set_cache_limit(cache_limit_from_python(nbytes)); },
      nb::arg("nbytes").none(), nb::sig("def set_cache_limit(nbytes: int) -> None"),
      "Bound the backward-weight cache to nbytes (0 disables it); evicts at once.");
}
