#pragma once
// The last header of an AMX kernel file: as avx512_bf16.h, with AVX512-VNNI, AVX512-VBMI (byte
// permutes across a register) and the AMX tiles' bfloat16 and int8 products too, the one place
// that set is spelled.

#include "avx512_bf16.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16,avx512vnni,avx512vbmi,amx-tile,amx-bf16,amx-int8")
