"""The upstream deprecation warnings of what qlgrad serves, and how to hide them.

quantize_dynamic and quantized tensors are deprecated upstream, and so is TorchScript; they
are what qlgrad serves. The demo, the examples and the benchmarks hide these warnings, and the
test configuration ignores the same ones (tests/conftest.py).
"""

import re
import warnings

# (start of the message, category)
UPSTREAM_DEPRECATIONS = (
    ("torch.ao.quantization is deprecated", DeprecationWarning),
    ("torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning),
    # A DeprecationWarning in torch 2.13, a FutureWarning from 2.14 on.
    ("`torch.jit.", Warning),
)


def hide_upstream_deprecations() -> None:
    """Ignore the warnings of ``UPSTREAM_DEPRECATIONS`` from now on."""
    for message, category in UPSTREAM_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
