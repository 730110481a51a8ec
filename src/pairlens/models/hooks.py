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


def capture_outputs(module: torch.nn.Module, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Run ``module(x)`` once and return the outputs of its submodules ``names`` (dotted paths;
    ``"input"`` is ``x`` itself). A tuple output is reduced to its first element, a Hugging Face
    model output to its ``last_hidden_state``.

    Raises:
        ValueError: a name that is not a submodule of ``module``.
    """
    out: dict[str, Tensor] = {}
    handles = []
    try:
        for name in names:
            if name == "input":
                out[name] = x
                continue
            try:
                sub = module.get_submodule(name)
            except AttributeError:
                kind = type(module).__name__
                raise ValueError(f"{name!r} is not a submodule of {kind}") from None

            def hook(_m, _inp, o, name=name):
                if hasattr(o, "last_hidden_state"):  # a Hugging Face model output
                    o = o.last_hidden_state
                out[name] = o[0] if isinstance(o, (tuple, list)) else o

            handles.append(sub.register_forward_hook(hook))
        if len(out) < len(names):
            module(x)
    finally:
        for h in handles:
            h.remove()
    return out


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
