"""Autograd plumbing shared by the gradient methods: guided backpropagation.

Guided backpropagation (Springenberg et al., 2015) lets only positive gradients flow back through
positive ReLU inputs. The paper's code registers backward hooks on ``nn.ReLU`` modules only, which
misses ReLUs applied functionally (``F.relu`` / ``torch.relu`` / ``Tensor.relu``, as in the
residual blocks of the SimCLRv2 port). Here a :class:`torch.overrides.TorchFunctionMode` swaps
every ReLU call made while the mode is active, module or functional, for :class:`GuidedReLU`.
In-place ReLUs are computed out of place (the caller receives the result as usual).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward pass keeps only positive gradients at positive inputs."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


_RELU_FUNCS = {
    F.relu,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
    torch.nn.functional.relu_,
}


class _GuidedMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            return GuidedReLU.apply(args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


@contextmanager
def guided_relus() -> Iterator[None]:
    """Within this context every ReLU backpropagates guided gradients."""
    with _GuidedMode():
        yield


@contextmanager
def replaced_output(module: torch.nn.Module, fn) -> Iterator[None]:
    """Within this context the output of ``module`` is replaced by ``fn(output)`` (a tuple output
    has its first element replaced), e.g. ``torch.zeros_like`` for a reference forward pass."""

    def hook(_m, _inp, out):
        if isinstance(out, (tuple, list)):
            return type(out)([fn(out[0]), *out[1:]])
        return fn(out)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
