"""What subprojects/torch/probe.py reads from torch, for a torch wheel of another architecture.

scripts/check_aarch64.sh installs this file as ``torch/__init__.py`` inside the unpacked aarch64
wheel (its ``include``, ``lib`` and ``version.py``), and puts the wheel's directory first on
PYTHONPATH while Meson configures the project. The probe imports ``torch`` to learn the version,
the C++ ABI and the include and library directories; the wheel's own ``torch`` cannot be imported
on the build machine, so this module answers the same four questions from the unpacked files:
the version from ``version.py``, the ABI from the mangled names that libc10 exports, the
directories as ``torch.utils.cpp_extension`` gives them for CPU builds.
"""

import re
import sys
import types
from pathlib import Path

_root = Path(__file__).resolve().parent

__version__ = re.search(r"^__version__ = '([^']+)'", (_root / "version.py").read_text(), re.M).group(1)


class _C:
    # libc10 takes std::string throughout; with the C++11 ABI its mangled name is std::__cxx11::basic_string.
    _GLIBCXX_USE_CXX11_ABI = b"__cxx11" in (_root / "lib" / "libc10.so").read_bytes()


def _include_paths() -> list[str]:
    return [str(_root / "include"), str(_root / "include" / "torch" / "csrc" / "api" / "include")]


def _library_paths() -> list[str]:
    return [str(_root / "lib")]


# `from torch.utils import cpp_extension`
utils = types.ModuleType("torch.utils")
cpp_extension = types.ModuleType("torch.utils.cpp_extension")
cpp_extension.include_paths = _include_paths
cpp_extension.library_paths = _library_paths
utils.cpp_extension = cpp_extension
sys.modules.update({"torch.utils": utils, "torch.utils.cpp_extension": cpp_extension})
