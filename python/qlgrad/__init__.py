"""Gradients through PyTorch's dynamically quantized int8 linear layers.

Importing qlgrad registers an Autograd kernel for ``quantized::linear_dynamic``:
from then on every ``torch.ao.nn.quantized.dynamic.Linear`` (what
``torch.ao.quantization.quantize_dynamic`` puts in place of ``nn.Linear``), and
every TorchScript module that calls the op, propagates the straight-through input
gradient ``grad_input = grad_output @ W_deq``.
"""

import os
from typing import NamedTuple

import torch

from ._build_info import TORCH_VERSION as _BUILT_FOR_TORCH
from ._build_info import VERSION as __version__

if torch.__version__ != _BUILT_FOR_TORCH:
    raise ImportError(
        f"qlgrad {__version__} was built for torch {_BUILT_FOR_TORCH}, but torch "
        f"{torch.__version__} is running. Its C++ library links libtorch's ABI, which "
        "changes between releases: rebuild qlgrad against the running torch with "
        "`pip install --no-build-isolation --force-reinstall --no-deps qlgrad` "
        "(or `pip install --no-build-isolation .` from a source checkout)."
    )

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """Path of ``libqlgrad.so``, for ``torch.ops.load_library`` in deployments without Python qlgrad."""
    return os.path.join(_PACKAGE_DIR, "lib", "libqlgrad.so")


torch.ops.load_library(library_path())

from . import _C  # noqa: E402  (needs the library loaded above)
from ._C import clear_cache, linear_int8_backward, set_cache_limit  # noqa: E402


class CacheInfo(NamedTuple):
    """Backward-weight cache statistics."""

    entries: int
    bytes: int
    hits: int
    misses: int
    limit_bytes: int


def cache_info() -> CacheInfo:
    """Statistics of the backward-weight cache (entries, bytes, hits, misses, limit_bytes)."""
    info = _C.cache_info()
    return CacheInfo(info.entries, info.bytes, info.hits, info.misses, info.limit_bytes)


def linear_dynamic_backward(grad_output: torch.Tensor, packed_params) -> torch.Tensor:
    """Input gradient of ``quantized::linear_dynamic`` for the given packed params.

    ``grad_output @ W_deq``, with ``W_deq`` the dequantized weight inside
    ``packed_params`` (the ``LinearPackedParamsBase`` object a dynamic
    ``Linear`` holds as ``layer._packed_params._packed_params``), taken from the
    weight cache. Differentiable with respect to ``grad_output``.

    The packed params are a TorchBind object, so this goes through
    ``torch.ops.qlgrad.linear_dynamic_backward``, which TorchScript can call too.
    """
    return torch.ops.qlgrad.linear_dynamic_backward(grad_output, packed_params)


__all__ = [
    "CacheInfo",
    "__version__",
    "cache_info",
    "clear_cache",
    "library_path",
    "linear_dynamic_backward",
    "linear_int8_backward",
    "set_cache_limit",
]
