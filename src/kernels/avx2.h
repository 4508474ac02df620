#pragma once
// The last header of an AVX2 kernel file: every function the file defines after it is compiled for
// ATen's AVX2 capability (AVX2 with FMA), the one place that set is spelled. Headers included
// after it would have their inline functions compiled for AVX2 too, and the linker could pick
// those copies for callers on any CPU: so it comes last.

#include <immintrin.h>

#pragma GCC target("avx2,fma")
