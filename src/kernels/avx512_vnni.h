#pragma once
// The last header of an AVX512-VNNI kernel file: as avx512.h, with the int8 dot products
// (vpdpbusd) too, the one place that set is spelled.

#include "avx512.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512vnni")
