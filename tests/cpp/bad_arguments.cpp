// Every public C++ entry point refuses malformed arguments with c10::TypeError (a wrong
// kind of argument) or c10::ValueError (a wrong value), and leaves the process usable.

#include "testing.h"

#include <qlgrad/qlgrad.h>

#include <functional>
#include <vector>

namespace {

using qlgrad_test::Tally;

enum class Expected { kTypeError, kValueError };

// Messages may go on to print a tensor; the first line names what is wrong.
std::string first_line(const char* message) {
  const std::string text(message);
  return text.substr(0, text.find('\n'));
}

template <typename Call>
void expect_refused(Tally& tally, const std::string& name, Expected expected, Call&& call) {
  const char* wanted = expected == Expected::kTypeError ? "c10::TypeError" : "c10::ValueError";
  try {
    call();
    tally.check(name, false, std::string("returned instead of throwing ") + wanted);
  } catch (const c10::TypeError& e) {
    tally.check(name, expected == Expected::kTypeError, first_line(e.what_without_backtrace()));
  } catch (const c10::ValueError& e) {
    tally.check(name, expected == Expected::kValueError, first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    tally.check(name, false, std::string("threw another exception: ") + first_line(e.what()));
  }
}

struct Int8Arguments {
  at::Tensor grad_output;
  at::Tensor weight;
  at::Tensor scale;
  std::optional<at::Tensor> zero_point;
};

struct BadInt8Case {
  std::string name;
  Expected expected;
  std::function<void(Int8Arguments&)> spoil;
};

// One malformed argument per case, on top of valid per-channel arguments [3, 6] x [6, 10].
std::vector<BadInt8Case> bad_int8_cases() {
  const auto meta = at::TensorOptions().device(at::kMeta);
  return {
      {"grad_output undefined", Expected::kTypeError, [](auto& a) { a.grad_output = at::Tensor(); }},
      {"grad_output int32", Expected::kTypeError, [](auto& a) { a.grad_output = a.grad_output.to(at::kInt); }},
      {"grad_output complex", Expected::kTypeError,
       [](auto& a) { a.grad_output = a.grad_output.to(at::kComplexFloat); }},
      {"grad_output 0-dim", Expected::kValueError, [](auto& a) { a.grad_output = at::randn({}); }},
      {"grad_output wrong last dimension", Expected::kValueError, [](auto& a) { a.grad_output = at::randn({3, 7}); }},
      {"grad_output on meta", Expected::kValueError, [meta](auto& a) { a.grad_output = at::empty({3, 6}, meta); }},
      {"weight undefined", Expected::kTypeError, [](auto& a) { a.weight = at::Tensor(); }},
      {"weight float", Expected::kTypeError, [](auto& a) { a.weight = a.weight.to(at::kFloat); }},
      {"weight 1-D", Expected::kValueError, [](auto& a) { a.weight = a.weight[0]; }},
      {"weight empty", Expected::kValueError, [](auto& a) { a.weight = a.weight.narrow(1, 0, 0); }},
      {"scale undefined", Expected::kTypeError, [](auto& a) { a.scale = at::Tensor(); }},
      {"scale int64", Expected::kTypeError, [](auto& a) { a.scale = at::ones({6}, at::kLong); }},
      {"scale wrong length", Expected::kValueError, [](auto& a) { a.scale = a.scale.narrow(0, 0, 5); }},
      {"scale 2-D", Expected::kValueError, [](auto& a) { a.scale = a.scale.unsqueeze(1); }},
      {"scale negative", Expected::kValueError, [](auto& a) { a.scale = -a.scale; }},
      {"scale NaN", Expected::kValueError, [](auto& a) { a.scale = at::full({6}, NAN, at::kDouble); }},
      {"scale Inf", Expected::kValueError, [](auto& a) { a.scale = at::full({6}, INFINITY, at::kDouble); }},
      {"scale on meta", Expected::kValueError, [meta](auto& a) { a.scale = at::empty({6}, meta.dtype(at::kDouble)); }},
      {"zero_point float", Expected::kTypeError, [](auto& a) { a.zero_point = a.zero_point->to(at::kFloat); }},
      {"zero_point wrong length", Expected::kValueError, [](auto& a) { a.zero_point = a.zero_point->narrow(0, 0, 3); }},
      {"zero_point above 127", Expected::kValueError, [](auto& a) { a.zero_point = *a.zero_point + 200; }},
      {"zero_point below -128", Expected::kValueError, [](auto& a) { a.zero_point = *a.zero_point - 200; }},
  };
}

} // namespace

int main() {
  at::manual_seed(0);
  Tally tally;
  int tried = 0;
  const auto weight = qlgrad_test::int8_weight(6, 10);
  const at::Tensor grad_output = at::randn({3, 6});

  for (const auto& bad : bad_int8_cases()) {
    Int8Arguments arguments{grad_output, weight.values, weight.scale, weight.zero_point};
    bad.spoil(arguments);
    ++tried;
    expect_refused(tally, "linear_int8_backward: " + bad.name, bad.expected, [&] {
      qlgrad::linear_int8_backward(arguments.grad_output, arguments.weight, arguments.scale, arguments.zero_point);
    });
  }

  const auto fp16_packed = qlgrad_test::prepack_fp16(at::randn({6, 10}));
  using PackedBackward =
      at::Tensor (*)(const at::Tensor&, const qlgrad_test::PackedParams&, std::optional<qlgrad::Precision>);
  const std::vector<std::tuple<std::string, PackedBackward, qlgrad_test::PackedParams, qlgrad_test::PackedParams>>
      packed_entry_points{
          {"linear_dynamic_backward", &qlgrad::linear_dynamic_backward, weight.packed, fp16_packed},
          {"linear_dynamic_fp16_backward", &qlgrad::linear_dynamic_fp16_backward, fp16_packed, weight.packed},
  };
  for (const auto& [name, backward, packed, other_kind] : packed_entry_points) {
    const std::vector<std::tuple<std::string, Expected, at::Tensor, qlgrad_test::PackedParams>> cases{
        {"grad_output undefined", Expected::kTypeError, at::Tensor(), packed},
        {"grad_output int32", Expected::kTypeError, grad_output.to(at::kInt), packed},
        {"grad_output 0-dim", Expected::kValueError, at::randn({}), packed},
        {"grad_output wrong last dimension", Expected::kValueError, at::randn({3, 7}), packed},
        {"grad_output on meta", Expected::kValueError, at::empty({3, 6}, at::TensorOptions().device(at::kMeta)),
         packed},
        {"packed null", Expected::kValueError, grad_output, qlgrad_test::PackedParams()},
        {"packed of the other kind", Expected::kTypeError, grad_output, other_kind},
    };
    for (const auto& [case_name, expected, bad_grad_output, bad_packed] : cases) {
      ++tried;
      // A fresh cache each time: whether a weight is cached must not decide what is refused.
      qlgrad::clear_cache();
      expect_refused(tally, name + ": " + case_name, expected,
                     [&] { backward(bad_grad_output, bad_packed, std::nullopt); });
    }
  }

  ++tried;
  expect_refused(tally, "cache_weight: packed null", Expected::kValueError,
                 [] { qlgrad::cache_weight(qlgrad_test::PackedParams()); });
  ++tried;
  expect_refused(tally, "set_cache_limit: negative", Expected::kValueError, [] { qlgrad::set_cache_limit(-1); });
  ++tried;
  expect_refused(tally, "parse_precision: unknown name", Expected::kValueError, [] { qlgrad::parse_precision("fp8"); });

  // Still usable after every refusal.
  const at::Tensor expected =
      at::matmul(grad_output.to(at::kDouble),
                 (weight.values.to(at::kDouble) - weight.zero_point.unsqueeze(1)) * weight.scale.unsqueeze(1));
  const at::Tensor got = qlgrad::linear_dynamic_backward(grad_output, weight.packed);
  tally.check("valid call after the refusals", at::allclose(got.to(at::kDouble), expected, 1e-5, 1e-6));

  qlgrad_test::report_figure("bad_inputs_tried", tried);
  return tally.finish();
}
