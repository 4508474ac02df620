"""Where the installed package keeps the native library and the C++ headers."""

import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def get_include() -> str:
    """Directory of the C++ headers (``#include <qlgrad/qlgrad.h>``)."""
    return os.path.join(_PACKAGE_DIR, "include")


def get_library_dir() -> str:
    """Directory holding ``libqlgrad.so`` and, in ``pkgconfig/``, ``qlgrad.pc``."""
    return os.path.join(_PACKAGE_DIR, "lib")


def library_path() -> str:
    """Path of ``libqlgrad.so``, for ``torch.ops.load_library`` in deployments without Python qlgrad."""
    return os.path.join(get_library_dir(), "libqlgrad.so")
