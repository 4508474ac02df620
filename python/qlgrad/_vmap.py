"""torch.vmap rules for the dynamic linear ops and qlgrad's packed backward ops.

Without them torch.func.vmap (and with it jacrev, jacfwd and per-sample gradients) falls
back to a loop that warns on every call.
"""

import torch


def _per_sample(op):
    # A dynamic linear op quantizes its whole input with one scale, so a batch of samples
    # is not one call: each sample runs alone, as it would outside vmap.
    def rule(info, in_dims, input, packed, *op_args, **op_kwargs):
        batch_dim = in_dims[0]
        if batch_dim is None:
            return op(input, packed, *op_args, **op_kwargs), None
        return torch.stack([op(sample, packed, *op_args, **op_kwargs) for sample in input.unbind(batch_dim)]), 0

    return rule


def _batched_rows(op):
    # grad_output @ W_deq acts on each row alone, so the batch joins the leading dimensions.
    def rule(info, in_dims, grad_output, packed, precision=None):
        batch_dim = in_dims[0]
        if batch_dim is None:
            return op(grad_output, packed, precision), None
        return op(grad_output.movedim(batch_dim, 0), packed, precision), 0

    return rule


for _name in ("linear_dynamic", "linear_relu_dynamic", "linear_dynamic_fp16", "linear_relu_dynamic_fp16"):
    _op = getattr(torch.ops.quantized, _name).default
    torch.library.register_vmap(_op, _per_sample(_op))
for _name in ("linear_dynamic_backward", "linear_dynamic_fp16_backward"):
    _op = getattr(torch.ops.qlgrad, _name).default
    torch.library.register_vmap(_op, _batched_rows(_op))
