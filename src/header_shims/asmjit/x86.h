#pragma once
// See core.h: the register types that fbgemm's headers alias, declared only.

namespace asmjit::x86 {
class Xmm;
class Ymm;
class Zmm;
} // namespace asmjit::x86
