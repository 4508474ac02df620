// The torch headers that libqlgrad's glue includes, compiled once per build (Meson's cpp_pch)
// instead of once per source file: parsing them is most of each file's compile time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/library.h>
