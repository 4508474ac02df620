"""Gradients through PyTorch's dynamically quantized int8 linear layers.

Importing qlgrad registers an Autograd kernel for ``quantized::linear_dynamic``:
from then on every ``torch.ao.nn.quantized.dynamic.Linear`` (what
``torch.ao.quantization.quantize_dynamic`` puts in place of ``nn.Linear``), and
every TorchScript module that calls the op, propagates the straight-through input
gradient ``grad_input = grad_output @ W_deq``. The Python API is in ``qlgrad.ops``.
"""

import torch

from ._build_info import TORCH_VERSION as _BUILT_FOR_TORCH
from ._build_info import VERSION as __version__
from ._paths import get_include, get_library_dir, library_path

if torch.__version__ != _BUILT_FOR_TORCH:
    raise ImportError(
        f"qlgrad {__version__} was built for torch {_BUILT_FOR_TORCH}, but torch "
        f"{torch.__version__} is running. Its C++ library links libtorch's ABI, which "
        "changes between releases: rebuild qlgrad against the running torch with "
        "`pip install --no-build-isolation --force-reinstall --no-deps qlgrad` "
        "(or `pip install --no-build-isolation .` from a source checkout)."
    )

torch.ops.load_library(library_path())

# Everything below needs the library loaded above: torch.compile, torchao, transformers and
# torch.vmap support, and the Python API.
from . import _compile, _import_hooks, _torchao, _transformers, _vmap, ops  # noqa: E402, F401
from .ops import *  # noqa: E402, F403

_torchao.install(_import_hooks.installed_version("torchao"))
_transformers.install(_import_hooks.installed_version("transformers"), _import_hooks.installed_version("torchao"))

__all__ = ["__version__", "get_include", "get_library_dir", "library_path", *ops.__all__]
