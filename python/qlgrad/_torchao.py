"""Input gradients through torchao's int8 dynamic-activation linear layers.

``torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())``
puts an ``Int8Tensor`` in place of each ``nn.Linear`` weight, and ``F.linear`` on that
weight quantizes its input to int8 first: the output has no autograd connection to
the input, so ``x.grad`` stays ``None``. Here qlgrad puts its own ``F.linear`` handler
into ``Int8Tensor``'s torch-function table, torchao's extension point for tensor
subclass operations. The handler runs torchao's own handler for the forward (outputs
are bit-identical) and gives the input the straight-through gradient
``grad_output @ (scale * W_int8)`` through :func:`qlgrad.linear_int8_backward`.

torchao is optional and heavy to import, so nothing here imports it: when qlgrad is
imported first, the handler is registered as soon as torchao's ``Int8Tensor`` module
has been executed.
"""

import functools
import importlib.abc
import importlib.metadata
import sys
import threading
import warnings

import torch
import torch.nn.functional as F

from .ops import get_backward_precision, linear_int8_backward

# The torchao releases whose Int8Tensor forward this module has been tested against: the
# handler relies on where torchao keeps the int8 values, scales and activation settings.
SUPPORTED_TORCHAO_VERSIONS = ("0.18.0",)

_INT8_TENSOR_MODULE = "torchao.quantization.quantize_.workflows.int8.int8_tensor"

_NOT_COVERED = (
    "input gradients through torchao's int8 dynamic-activation linear layers "
    "(quantize_ with Int8DynamicActivationInt8WeightConfig) stay None"
)

# Guards the import hook's insertion into and removal from sys.meta_path.
_lock = threading.Lock()


class _StraightThroughInt8Linear(torch.autograd.Function):
    """torchao's own forward; the straight-through input gradient in backward."""

    @staticmethod
    def forward(ctx, input, bias, weight, stock_forward, precision):
        # The weight's tensors are constants: backward reads its int8 values, scales and pre-scale.
        ctx.save_for_backward(weight.qdata, weight.scale, weight.act_pre_scale)
        ctx.precision = precision
        # torchao adds the bias to the int8 product rescaled by the float32 weight scale (so in
        # float32 for bfloat16 inputs), then casts to the input's dtype: the bias gradient is
        # summed in that dtype.
        ctx.bias_sum_dtype = torch.promote_types(input.dtype, weight.scale.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.bias_shape = None if bias is None else bias.shape
        return stock_forward(input, bias)

    @staticmethod
    def backward(ctx, grad_output):
        values, scale, act_pre_scale = ctx.saved_tensors
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Per row or per tensor, torchao keeps the scale as [N, 1] or [1, 1]. Its forward
            # multiplies by the scales only, ignoring the weight's zero point (torchao
            # quantizes these weights symmetrically: it is zero), and so does this gradient.
            grad_input = linear_int8_backward(grad_output, values, scale.reshape(-1), None, ctx.precision)
            if act_pre_scale is not None:
                # The forward multiplies the input by it before quantizing (SmoothQuant, AWQ).
                grad_input = grad_input * act_pre_scale
        if ctx.needs_input_grad[1]:
            # The gradient torchao's own `y += bias` would give the bias, bit for bit.
            grad_bias = grad_output.to(ctx.bias_sum_dtype).sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        return grad_input, grad_bias, None, None, None


def _make_linear_handler(stock_handler, int8_tensor_class):
    """An F.linear handler for Int8Tensor weights that adds the input gradient to ``stock_handler``."""

    @functools.wraps(stock_handler)
    def linear_with_input_gradient(func, types, args, kwargs):
        # torchao's handler reads input, weight and bias from args only (nn.Linear passes them
        # so); any other call goes to it unchanged.
        if len(args) < 2 or not torch.is_grad_enabled():
            return stock_handler(func, types, args, kwargs)
        input, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if not (
            # Otherwise torchao's forward already gives every gradient there is (the bias's).
            isinstance(input, torch.Tensor)
            and input.requires_grad
            and isinstance(weight, int8_tensor_class)
            # Without activation quantization (weight-only configs) torchao's forward is a
            # float matmul that autograd already differentiates.
            and weight.act_quant_kwargs is not None
            and weight.qdata.dim() == 2
        ):
            return stock_handler(func, types, args, kwargs)

        def stock_forward(input, bias):
            return stock_handler(func, types, (input, weight, bias)[: len(args)], kwargs)

        # The precision in effect at forward time is the one backward uses, as for
        # quantized::linear_dynamic.
        return _StraightThroughInt8Linear.apply(input, bias, weight, stock_forward, get_backward_precision())

    linear_with_input_gradient.qlgrad_input_gradient = True
    return linear_with_input_gradient


def _register(int8_tensor_module) -> None:
    """Put the gradient-giving F.linear handler into Int8Tensor's torch-function table."""
    int8_tensor_class = getattr(int8_tensor_module, "Int8Tensor", None)
    table = getattr(int8_tensor_class, "_TORCH_FN_TABLE", {}).get(int8_tensor_class, {})
    stock_handler = table.get(F.linear)
    if stock_handler is None:
        warnings.warn(
            f"qlgrad: torchao's Int8Tensor has no F.linear handler where qlgrad expects one; {_NOT_COVERED}",
            stacklevel=2,
        )
        return
    if getattr(stock_handler, "qlgrad_input_gradient", False):
        return  # registered already
    # Only the torch-function table: torchao's aten.linear entry runs below autograd, where no
    # gradient can be attached. Int8Tensor's own registration decorator keeps the table's format.
    int8_tensor_class.implements_torch_function(F.linear)(_make_linear_handler(stock_handler, int8_tensor_class))


class _LoaderThenRegister(importlib.abc.Loader):
    """Executes the Int8Tensor module with its own loader, then registers the handler."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register(module)
        # Only now: should executing the module fail, a later import of it registers instead.
        with _lock:
            sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RegisterWhenImported)]

    def __getattr__(self, name):
        # get_source, get_code, is_package...: inspect and torch.compile read sources through them.
        return getattr(self._loader, name)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Finds torchao's Int8Tensor module like the other finders would, with a loader that registers."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _INT8_TENSOR_MODULE:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderThenRegister(spec.loader)
                return spec
        return None


def installed_torchao_version() -> str | None:
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return None


def install(torchao_version: str | None) -> None:
    """Give torchao ``torchao_version`` (None: not installed) qlgrad's gradients, or say why not.

    Warns once, at the import of qlgrad, for a torchao release qlgrad was not tested with.
    """
    if torchao_version is None:
        return
    # Local builds carry a suffix (0.18.0+cpu, 0.18.0+git...): the release number decides.
    if torchao_version.split("+")[0] not in SUPPORTED_TORCHAO_VERSIONS:
        warnings.warn(
            f"qlgrad: torchao {torchao_version} is installed, but qlgrad supports torchao "
            f"{', '.join(SUPPORTED_TORCHAO_VERSIONS)} only; {_NOT_COVERED}. Install "
            f"qlgrad[torchao] for a supported torchao.",
            stacklevel=3,
        )
        return
    module = sys.modules.get(_INT8_TENSOR_MODULE)
    if module is not None:
        _register(module)
        return
    with _lock:
        if not any(isinstance(finder, _RegisterWhenImported) for finder in sys.meta_path):
            sys.meta_path.insert(0, _RegisterWhenImported())
