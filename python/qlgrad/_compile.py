"""torch.compile support for the dynamic linear ops and qlgrad's packed backward ops.

While torch.compile traces, the packed params (a TorchBind object) are replaced by a
fake object, built from what the native ``__obj_flatten__`` that libqlgrad adds to
``LinearPackedParamsBase`` returns. torch dispatches every call that holds a fake
object in Python, where no native kernel can run; this module provides what those
calls need: the fake class, fake kernels (shapes only), and Python autograd kernels
that record the same straight-through backward as the native Autograd kernels. The
Python autograd kernels are reached only through torch's Python dispatcher (tracing);
eager calls and TorchScript keep the native kernels.
"""

import torch
from torch._C import DispatchKey
from torch._library.fake_class_registry import FakeScriptObject, register_fake_class
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import _disable_current_modes


@register_fake_class("quantized::LinearPackedParamsBase")
class FakeLinearPackedParams:
    """What tracing knows of a packed weight: its kind and shape, and the sizes of the flat
    tensors that ``qlgrad::_linear_dynamic_with_weight`` returns beside its output."""

    def __init__(
        self,
        kind: str,
        in_features: int,
        out_features: int,
        values_numel: int,
        description_numel: int,
        scale_numel: int,
        zero_point_numel: int,
    ):
        self.kind = kind
        self.in_features = in_features
        self.out_features = out_features
        # Each field an attribute of its own name, which Dynamo reads back.
        self.values_numel = values_numel
        self.description_numel = description_numel
        self.scale_numel = scale_numel
        self.zero_point_numel = zero_point_numel

    @classmethod
    def __obj_unflatten__(cls, flattened):
        return cls(**dict(flattened))

    def unpack(self):
        raise NotImplementedError(
            "qlgrad: a packed weight cannot be unpacked inside torch.compile; call layer.weight() outside it"
        )

    def bias(self):
        raise NotImplementedError(
            "qlgrad: a packed bias cannot be read inside torch.compile; call layer.bias() outside it"
        )


_FAMILY = {"qint8": "quantized::linear_dynamic", "fp16": "quantized::linear_dynamic_fp16"}

_fake_script_object_init = FakeScriptObject.__init__


def _fake_without_copy(self, wrapped_obj, script_class_name, x):
    """A packed weight's fake keeps the real object it stands for, not a deep copy of it.

    torch deep-copies every TorchBind object it fakes (unless its type is opaque), so that
    a fake kernel that mutated it would not reach the real one; the compiled graph then runs
    on the copy. A packed weight's copy is a repacked weight, made each time the object is
    faked (several times per compilation) and kept as long as the compiled graph: several
    times the model's int8 weights. qlgrad's fake kernels read only the fake's shapes, and the
    ops never mutate a packed weight, so the graph can run on the layer's own object."""
    if not isinstance(wrapped_obj, FakeLinearPackedParams):
        return _fake_script_object_init(self, wrapped_obj, script_class_name, x)
    object.__setattr__(self, "wrapped_obj", wrapped_obj)
    object.__setattr__(self, "script_class_name", script_class_name)
    object.__setattr__(self, "real_obj", x)


FakeScriptObject.__init__ = _fake_without_copy


def _fake_params(op_name: str, packed, kind: str | None = None) -> FakeLinearPackedParams:
    # A fake object while torch.compile traces; a real one in a fake-tensor run (opcheck).
    if isinstance(packed, FakeScriptObject):
        params = packed.wrapped_obj
    else:
        # Unpacking a weight the first time makes real tensors: outside the fake mode.
        with _disable_current_modes():
            params = FakeLinearPackedParams.__obj_unflatten__(packed.__obj_flatten__())
    if kind is not None and params.kind != kind:
        raise TypeError(
            f"qlgrad: {op_name} expects {kind} packed weights, got {params.kind} ones "
            f"(packed for {_FAMILY[params.kind]})"
        )
    return params


def _register_traced_autograd(op, kernel) -> None:
    # Packed weights live on the CPU, but AutogradCUDA needs the kernel as well: for a call
    # holding a fake object, torch/_ops.py (TorchBindOpOverload._dispatch_in_python) removes
    # every Autograd key without a kernel from the full key set as a fallthrough, and
    # removing AutogradCUDA clears the Autograd functionality bit that AutogradCPU shares.
    for key in (DispatchKey.AutogradCPU, DispatchKey.AutogradCUDA):
        op.py_impl(key)(kernel)


class _TracedDynamicLinear(torch.autograd.Function):
    """The node of the native Autograd kernel (src/quantized_autograd.cpp), as tracing records it.

    A compiled graph cannot save the packed params (a TorchBind object) for its backward:
    AOTAutograd's runtime refuses them (``save_from_forward`` in
    torch/_functorch/_aot_autograd/runtime_wrappers.py). So the traced forward is
    ``qlgrad::_linear_dynamic_with_weight``: the stock op, and the stored weight as plain tensors
    (the weight the packed backward reads, nothing copied), which the backward takes.
    """

    @staticmethod
    def forward(input, packed, relu, reduce_range):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.qlgrad._linear_dynamic_with_weight(input, packed, relu, reduce_range)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, _, relu, _ = inputs
        output, *stored = outputs
        ctx.mark_non_differentiable(*stored)
        ctx.in_features = input.shape[-1]
        ctx.save_for_backward(*stored, *((output > 0,) if relu else ()))

    @staticmethod
    def backward(ctx, grad_output, *_):
        # description holds the precision chosen when the forward ran (-1: none, grad_output's dtype
        # decides), as the native node records it.
        values, description, scale, zero_point, *passed = ctx.saved_tensors
        if passed:
            # where, as the native node: a NaN cut off by the ReLU must not come back.
            grad_output = torch.where(passed[0], grad_output, 0.0)
        grad_input = torch.ops.qlgrad._stored_weight_backward(
            grad_output, values, description, scale, zero_point, ctx.in_features
        )
        return grad_input, None, None, None


def _register_dynamic_linear(name: str, kind: str, relu: bool) -> None:
    op = getattr(torch.ops.quantized, name).default

    def fake(input, packed, *op_args, **op_kwargs):
        # Shapes only; the real kernel checks everything else.
        params = _fake_params(op.name(), packed, kind)
        torch._check(
            input.shape[-1] == params.in_features,
            lambda: f"qlgrad: {op.name()}'s input must have in_features = {params.in_features} as its last dimension",
        )
        return input.new_empty((*input.shape[:-1], params.out_features))

    def traced_autograd(input, packed, *op_args, **op_kwargs):
        if not (torch.is_grad_enabled() and input.requires_grad):
            with torch._C._AutoDispatchBelowAutograd():
                return op(input, packed, *op_args, **op_kwargs)
        _fake_params(op.name(), packed, kind)  # refuses a weight of the other kind, as the stock op does
        # The int8 ops' reduce_range: the only argument beside input and packed.
        reduce_range = bool(op_args[0] if op_args else op_kwargs.get("reduce_range", False))
        output, *_ = _TracedDynamicLinear.apply(input, packed, relu, reduce_range)
        return output

    # Not torch.library.register_fake: torch's quantized library names a Python module of
    # its own for fake kernels (m.set_python_module in aten/src/ATen/native/quantized/library.cpp),
    # and register_fake refuses any other. A fake-mode kernel on the operator is what
    # torch.compile calls with a fake object.
    op.py_impl(FakeTensorMode)(lambda mode, *args, **kwargs: fake(*args, **kwargs))
    _register_traced_autograd(op, traced_autograd)


@torch.library.register_fake("qlgrad::_linear_dynamic_with_weight")
def _linear_dynamic_with_weight_fake(input, packed, relu, reduce_range):
    params = _fake_params("qlgrad::_linear_dynamic_with_weight", packed)
    output = input.new_empty((*input.shape[:-1], params.out_features))
    values_dtype = torch.int8 if params.kind == "qint8" else torch.float16
    dtypes = (values_dtype, torch.int64, torch.float32, torch.float32)
    numels = (params.values_numel, params.description_numel, params.scale_numel, params.zero_point_numel)
    return output, *(input.new_empty(n, dtype=dtype) for n, dtype in zip(numels, dtypes))


@torch.library.register_fake("qlgrad::_stored_weight_backward")
def _stored_weight_backward_fake(grad_output, values, description, scale, zero_point, in_features):
    return grad_output.new_empty((*grad_output.shape[:-1], in_features))


def _register_packed_backward(name: str, kind: str) -> None:
    op = getattr(torch.ops.qlgrad, name).default

    def fake(grad_output, packed, precision=None):
        # Registered for the meta device too: a meta grad_output outside a fake mode lands here
        # (under inference mode, which skips the Autograd kernel's checks).
        if grad_output.device.type != "cpu":
            raise ValueError(
                f"qlgrad: grad_output must be on the device of packed weights (cpu), got {grad_output.device}"
            )
        params = _fake_params(op.name(), packed, kind)
        torch._check(
            grad_output.shape[-1] == params.out_features,
            lambda: (
                f"qlgrad: grad_output's last dimension must equal the weight's out_features ({params.out_features})"
            ),
        )
        return grad_output.new_empty((*grad_output.shape[:-1], params.in_features))

    def traced_autograd(grad_output, packed, precision=None):
        # A compiled backward is not differentiated again, so tracing needs no node here.
        if torch.is_grad_enabled() and grad_output.requires_grad:
            raise NotImplementedError(
                f"qlgrad: {op.name()} is not differentiable inside torch.compile; differentiate it eagerly"
            )
        with torch._C._AutoDispatchBelowAutograd():
            return op(grad_output, packed, precision)

    torch.library.register_fake(op, fake)
    _register_traced_autograd(op, traced_autograd)


for _name, _kind, _relu in (
    ("linear_dynamic", "qint8", False),
    ("linear_relu_dynamic", "qint8", True),
    ("linear_dynamic_fp16", "fp16", False),
    ("linear_relu_dynamic_fp16", "fp16", True),
):
    _register_dynamic_linear(_name, _kind, _relu)
_register_packed_backward("linear_dynamic_backward", "qint8")
_register_packed_backward("linear_dynamic_fp16_backward", "fp16")
