// A C++ deployment that trains: load a TorchScript model quantized with
// quantize_dynamic, run forward and backward, check the input gradient against the
// float64 straight-through reference stored in the model.

#include <qlgrad/qlgrad.h>

#include <torch/script.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: jit_deploy MODEL.pt\n";
    return 2;
  }
  torch::jit::Module model = torch::jit::load(argv[1]);
  const at::Tensor x = model.attr("example_input").toTensor().clone().requires_grad_(true);
  const at::Tensor y = model.forward({x}).toTensor();
  y.backward(model.attr("grad_output").toTensor());

  const at::Tensor expected = model.attr("expected_input_grad").toTensor();
  const double error = (x.grad().to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  // Linking libqlgrad is what registers the Autograd kernel. Its cache shows which weights it
  // read: those that fbgemm packed (the x86 and fbgemm engines) in place, the others' unpacked
  // into it, one entry per layer.
  const auto engine = at::globalContext().qEngine();
  const int64_t expected_entries = engine == at::QEngine::X86 || engine == at::QEngine::FBGEMM ? 0 : 3;
  const qlgrad::CacheInfo cache = qlgrad::cache_info();
  std::cout << "max |grad - reference| = " << error << " (max |reference| = " << scale
            << "), cached weights: " << cache.entries << " (" << expected_entries << " expected)\n";
  const bool ok = x.grad().defined() && error <= 1e-5 * scale && cache.entries == expected_entries;
  std::cout << (ok ? "1 passed, 0 failed" : "0 passed, 1 failed") << "\n";
  return ok ? 0 : 1;
}
