"""Layer-wise relevance propagation (LRP) of a :class:`SimilarityModel`'s embedding, via zennit.

zennit (Anders et al., the LRP library of the group that wrote BiLRP) turns the backward pass into
LRP: every hooked layer returns the relevance of its input instead of a gradient, so
``autograd.grad(z, x, grad_outputs=R_z)`` gives the input relevance of an initial embedding
relevance ``R_z``. This module builds the model view, canonizers and rules used by BiLRP
(Eberle et al., TPAMI 2020; their code ``oeberle/BiLRP_explain_similarity``, ``model/bilrp.py``):

* the z^B (box) rule in the first convolution, with the bounds of [0, 1] pixels in model-input
  space (``(0 - mean) / std`` and ``(1 - mean) / std``), as the authors' code;
* the gamma rule in every other convolution. The authors' VGG-16 code lowers gamma with depth
  (0.5, 0.25, 0.1, 0); here one ``gamma`` (default 0.25, zennit's) is used for any architecture;
* the epsilon rule in linear layers (the projection head), the authors' LRP-0 with a stabiliser;
* pass-through activations, the Norm rule for average pooling and for residual sums (zennit's
  canonizers for the blocks of torchvision ResNets, and the same treatment for the bundled models'
  basic blocks);
* batch norms pass relevance through unchanged (zennit's rule for a batch norm that is not merged).
  The authors' VGG-16 has no batch norm. Merging batch norms into the preceding convolution or
  linear layer (zennit's ``SequentialMergeBatchNorm``) gives them biases of the size of the
  activations' running means, which then absorb or amplify relevance almost arbitrarily: on the
  bundled cat pair and ``photos`` model 2 % and -3 % of the embedding's relevance reached the
  pixels with merging, 97 % and 95 % without (``benchmarks/bilrp_batchnorm.py``).

zennit has no rules for LayerNorm, attention or the residual streams of transformers; models that
contain them are refused with a clear message rather than explained wrongly.

The model is deep-copied before canonizers and hooks are attached, so the caller's model (possibly
used by another thread) is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from pairlens.models.similarity import SimilarityModel

#: module types zennit has no LRP rule for; a model containing one is refused by BiLRP.
UNSUPPORTED = (nn.LayerNorm, nn.MultiheadAttention, nn.GroupNorm, nn.InstanceNorm2d)


class _Pool(nn.Module):
    """``pool_features`` of :mod:`pairlens.models.similarity` as a module, so that average
    pooling gets zennit's Norm rule instead of an even split of the relevance."""

    def __init__(self) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, f: Tensor) -> Tensor:
        if f.dim() == 4:
            return self.avg(f).flatten(1)
        if f.dim() == 3:
            return f[:, 0]
        return f


class _View(nn.Module):
    """encoder -> pooling (a module) -> head of one tower: its embedding, ready for zennit."""

    def __init__(self, model: SimilarityModel, tower: int = 1) -> None:
        super().__init__()
        t = model.tower(tower)
        self.encoder = copy.deepcopy(t.encoder)
        self.pool = _Pool()
        self.head = copy.deepcopy(t.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.encoder(x)))


def _basic_block_forward(self, x: Tensor) -> Tensor:
    """Forward of :class:`pairlens.models.bundled.BasicBlock` with the residual sum as a module."""
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out = self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1))
    return self.relu2(out)


def _canonizers() -> list:
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    from pairlens.models.bundled import BasicBlock

    def bundled_blocks(_name: str, module: nn.Module):
        if isinstance(module, BasicBlock):
            return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer(),
            AttributeCanonizer(bundled_blocks)]


def unsupported_layers(
    model: SimilarityModel, tower: int = 1, x: Tensor | None = None
) -> list[str]:
    """Names of the layer types of ``tower`` that zennit has no LRP rule for (empty: supported).

    With ``x`` (a (B, C, H, W) batch in model-input space), only the layers that run in a forward
    pass of ``x[:1]`` count: a module that is defined but unused (an encoder's spare LayerNorm)
    does not stop LRP, and one that runs does."""
    t = model.tower(tower)
    modules = [*t.encoder.modules(), *t.head.modules()]
    bad = [m for m in modules if isinstance(m, UNSUPPORTED) or "Attention" in type(m).__name__]
    if bad and x is not None:
        ran: set[int] = set()
        handles = [m.register_forward_hook(lambda mod, _i, _o: ran.add(id(mod))) for m in bad]
        try:
            with torch.no_grad():
                model.embed(x[:1], tower)
        finally:
            for h in handles:
                h.remove()
        bad = [m for m in bad if id(m) in ran]
    return sorted({type(m).__name__ for m in bad})


@contextmanager
def lrp_embedding(
    model: SimilarityModel, tower: int = 1, gamma: float = 0.25, epsilon: float = 1e-6,
    x: Tensor | None = None,
) -> Iterator[nn.Module]:
    """A copy of the embedding function of ``tower`` whose backward pass is LRP (see module
    docstring).

    Inside the context, ``z = view(x)`` (x requiring grad) followed by
    ``autograd.grad(z, x, grad_outputs=R_z)`` returns the relevance (B, 3, H, W) of the pixels for
    the embedding relevance ``R_z`` (B, D). The relevance is linear in ``R_z`` for a fixed forward
    pass, so several backward passes of one forward pass (``retain_graph=True``) are allowed.

    Raises:
        ValueError: the tower has layers without an LRP rule (:func:`unsupported_layers`; with
            ``x``, among the layers that run on ``x``).
        ImportError: zennit is not installed.
    """
    try:
        from zennit.composites import EpsilonGammaBox
    except ModuleNotFoundError as err:
        raise ImportError("LRP needs zennit: pip install 'pairlens[lrp]'") from err

    bad = unsupported_layers(model, tower, x)
    if bad:
        raise ValueError(f"LRP (zennit) has no rules for the {', '.join(bad)} layers of model "
                         f"{model.name!r}")
    view = _View(model, tower).to(model.device).eval()
    for p in view.parameters():
        p.requires_grad_(False)
    channels = model.tower(tower).mean.shape[1]
    low = model.normalize(torch.zeros(1, channels, 1, 1, device=model.device), tower)
    high = model.normalize(torch.ones(1, channels, 1, 1, device=model.device), tower)
    composite = EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma,
                                canonizers=_canonizers())
    with composite.context(view) as hooked:
        yield hooked
