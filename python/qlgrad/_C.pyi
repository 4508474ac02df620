"""Native entry points of qlgrad."""

import torch


def linear_int8_backward(grad_output: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, precision: str | None = None) -> torch.Tensor:
    """
    Input gradient of an int8 linear layer on plain tensors:
    ``grad_output @ (scale * (weight - zero_point))``.

    weight: int8 [N, K]. scale: floating, 1 element (per tensor) or [N] (per
    output channel). zero_point: integer, shaped like scale; None for a
    symmetric weight. grad_output: floating [..., N]; the result has its dtype
    and shape [..., K]. Differentiable with respect to grad_output (scale and
    zero_point are constants). precision: 'fp32', 'bf16' or 'int8'; None for
    the one in effect on this thread.
    """

def set_backward_precision(name: str) -> None:
    """Set the process-wide backward precision: 'fp32', 'bf16' or 'int8'."""

def get_backward_precision() -> str:
    """The backward precision in effect on this thread."""

class backward_precision:
    """
    Context manager: the backward precision of this thread inside a with block.
    Layers record it when their forward runs.
    """

    def __init__(self, name: str) -> None: ...

    def __enter__(self) -> None: ...

    def __exit__(self, *args) -> None: ...

def cache_info() -> tuple[int, int, int, int, int]:
    """
    Statistics of the backward-weight cache: (entries, bytes, hits, misses, limit_bytes).
    """

def clear_cache() -> None:
    """Drop every cached backward weight and reset the hit and miss counters."""

def set_cache_limit(nbytes: int) -> None:
    """
    Bound the backward-weight cache to nbytes (0 disables it); evicts at once.
    """
