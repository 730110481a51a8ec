"""CLIP image-text models through open_clip (optional extra ``pairlens[clip]``), from a local file.

Accepted files: open_clip / OpenAI state dicts as published on the Hugging Face hub
(``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``, for example in
``timm/vit_base_patch32_clip_224.openai``), and training checkpoints of open_clip
(``{'epoch', 'name', 'state_dict': {module.*}, 'optimizer'}``). OpenAI's original TorchScript
archives (``ViT-B-32.pt``) are not state dicts and cannot be loaded with ``weights_only=True``;
the error says which file to use instead. Loading is strict (every key, every shape).

The pair-explanation model is the image tower: embedding ``image`` (default) is
``encode_image``, the projected image embedding in the joint image-text space; ``backbone`` is the
pooled image token before the projection (ViT towers only). The text tower is kept on the model
for text corpora: :meth:`ClipSimilarityModel.embed_text` gives caption embeddings in the same
space. OpenAI normalisation, bicubic resize of the shorter side to the input size and centre crop.
CAM layer: the tokens entering the last residual block of the image transformer
(``visual.transformer.resblocks.{L-1}.ln_1``, (B, 1 + N, C), grid inferred from the patch size;
the pooled class token does not depend on the last block's output patch tokens)
or ``visual.layer4`` for the ResNet (RN50) towers.

OpenAI's released weights were trained with QuickGELU: the ``clip-*`` entries use it (``quick_gelu``
argument); the generic ``clip`` entry takes ``arch=`` (any open_clip architecture name, for
example ``ViT-B-32`` for LAION-2B weights, which use plain GELU, or the path of an open_clip
model-config ``.json``). When the file's folder holds the ``open_clip_config.json`` that the
Hugging Face hub publishes beside the weights, its ``quick_gelu`` setting is used (with a warning
if it contradicts ``arch``); a file whose path says ``openai`` loaded without QuickGELU gives a
warning (the embeddings would be silently wrong). :func:`load_clip` is the one loader used
everywhere (models, COCOA text corpora, the CLI).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pairlens.models.checkpoint import (
    CheckpointError,
    find_state_dict,
    load_strict,
    read_checkpoint,
)
from pairlens.models.registry import register_model
from pairlens.models.similarity import SimilarityModel
from pairlens.models.zoo.common import check_embedding, unwrap_module

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EMBEDDINGS = ("image", "backbone")
HF = "https://huggingface.co/timm/{repo}/resolve/main/open_clip_pytorch_model.bin"
ARCHS = {
    # name: (open_clip architecture, Hugging Face repository of the OpenAI weights, CAM layer)
    "clip-vit-b32": ("ViT-B-32", "vit_base_patch32_clip_224.openai", "resblocks.11.ln_1"),
    "clip-vit-b16": ("ViT-B-16", "vit_base_patch16_clip_224.openai", "resblocks.11.ln_1"),
    "clip-vit-l14": ("ViT-L-14", "vit_large_patch14_clip_224.openai", "resblocks.23.ln_1"),
    "clip-rn50": ("RN50", "resnet50_clip.openai", "layer4"),
}
# just below 1: SimilarityModel resizes the shorter side to input/crop_fraction and centre-crops;
# exactly 1.0 would squash the whole image instead (open_clip's "shortest" resize mode is this one)
CLIP_CROP = 0.99999


def import_open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "CLIP models need open_clip: pip install 'pairlens[clip]' (open_clip_torch)"
        ) from err
    return open_clip


class ClipImageEncoder(nn.Module):
    """open_clip's image tower: (B, 3, H, W) -> image embedding (B, D)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: Tensor) -> Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out


class ClipSimilarityModel(SimilarityModel):
    """A CLIP image tower as a :class:`SimilarityModel`, with the text tower for text corpora."""

    has_text_tower = True

    def __init__(self, encoder: ClipImageEncoder, text_model: nn.Module, arch: str, **kw):
        super().__init__(encoder, **kw)
        self.text = text_model
        self.arch = arch
        self._tokenizer = None

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        if self._tokenizer is None:
            self._tokenizer = import_open_clip().get_tokenizer(self.arch)
        return self._tokenizer(list(texts))

    def embed_text(self, texts: str | Sequence[str]) -> Tensor:
        """Caption embeddings (T, D) in the image embedding space (not normalised)."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenize(texts).to(self.device)
        return self.text.encode_text(tokens)


def build_clip(
    name: str,
    arch: str,
    checkpoint=None,
    embedding: str = "image",
    quick_gelu: bool = False,
    random_weights: bool = False,
    hint: str = "",
) -> ClipSimilarityModel:
    """Build open_clip's ``arch`` (random init, nothing downloaded), load ``checkpoint`` strictly
    and wrap the image tower (the text tower stays available through ``embed_text``)."""
    check_embedding(name, embedding, EMBEDDINGS)
    open_clip = import_open_clip()
    expected = f"an open_clip {arch} state dict (open_clip_pytorch_model.bin / .safetensors)"
    sd = None
    if checkpoint is None and not random_weights:
        raise CheckpointError(
            f"model {name!r} needs its checkpoint file: pass checkpoint=PATH (CLI: --checkpoint "
            f"PATH){'; ' + hint if hint else ''}"
        )
    if checkpoint is not None:
        try:
            obj = read_checkpoint(checkpoint, expected)
        except CheckpointError as err:
            if _is_torchscript(checkpoint):
                raise CheckpointError(
                    f"{checkpoint}: is an OpenAI TorchScript archive, which cannot be loaded with "
                    f"weights_only=True; use the open_clip state dict instead ({hint or expected})"
                ) from None
            raise err from None
        sd = unwrap_module(find_state_dict(obj, checkpoint, expected))
    if sd is not None:
        # keys and shapes are checked on a meta-device model, whose weights then become the
        # file's tensors: a foreign file costs no allocation, a good one no random init
        with torch.device("meta"):
            clip = _create(open_clip, arch, quick_gelu, device="meta")
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
        sd.pop("text.transformer.embeddings.position_ids", None)
        own = clip.state_dict()
        for k in ("logit_scale", "logit_bias"):
            if k in sd and k in own and sd[k].shape != own[k].shape:
                sd[k] = sd[k].reshape(own[k].shape)
        load_strict(clip, sd, checkpoint, expected, assign=True)
        if not _fill_computed_buffers(clip):
            clip = _create(open_clip, arch, quick_gelu)
            load_strict(clip, sd, checkpoint, expected)
    else:
        clip = _create(open_clip, arch, quick_gelu)
    visual = clip.visual
    transformer = getattr(visual, "transformer", None)
    if transformer is not None:
        if not getattr(transformer, "batch_first", True):
            raise ImportError("PairLens needs open_clip_torch >= 2.24 (batch-first transformers)")
        layer = f"visual.transformer.resblocks.{len(transformer.resblocks) - 1}.ln_1"
    else:
        layer = "visual.layer4"
    if embedding == "backbone":
        if getattr(visual, "proj", None) is None:
            raise ValueError(f"model {name!r}: embedding 'backbone' needs a ViT image tower")
        visual.proj = None
    clip.visual = nn.Identity()  # the text tower keeps everything but the image tower
    size = getattr(visual, "image_size", (224, 224))
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    model = ClipSimilarityModel(
        ClipImageEncoder(visual),
        clip,
        arch,
        feature_layer=layer,
        input_size=size,
        mean=tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN),
        std=tuple(getattr(visual, "image_std", None) or OPENAI_STD),
        crop_fraction=CLIP_CROP,
        name=name,
    )
    return model.eval()


def load_clip(
    checkpoint: str | Path,
    arch: str = "ViT-B-32",
    embedding: str = "image",
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
) -> ClipSimilarityModel:
    """An open_clip model from a local file: image tower as a :class:`SimilarityModel`, text tower
    through ``embed_text``. The one CLIP loader of PairLens.

    Args:
        checkpoint: open_clip state dict (``.bin`` / ``.pt`` / ``.safetensors``) or open_clip
            training checkpoint; loaded strictly with ``weights_only=True``.
        arch: open_clip architecture name (``ViT-B-32``, ``ViT-B-32-quickgelu``) or the path of an
            open_clip model-config ``.json`` (its file name without ``.json`` is the name).
        embedding: ``image`` (``encode_image``) or ``backbone`` (before the projection).
        quick_gelu: force QuickGELU on / off; None reads it from the architecture name, then from
            an ``open_clip_config.json`` beside the file (see the module docstring).
        device: where the model goes.

    Raises:
        CheckpointError: missing, unreadable or foreign file (one line naming it).
        ValueError: unknown architecture or config file.
    """
    open_clip = import_open_clip()
    name = str(arch)
    if name.endswith(".json"):
        config = Path(name).expanduser()
        if not config.is_file():
            raise ValueError(f"{config}: no such open_clip model config")
        open_clip.add_model_config(config)
        name = config.stem
    quick = clip_quick_gelu(name, checkpoint, quick_gelu)
    model = build_clip(f"clip:{name}", name, checkpoint, embedding, quick)
    from pairlens.models.similarity import resolve_device

    return model.to(resolve_device(device)).eval()


def clip_quick_gelu(arch: str, checkpoint: str | Path | None, quick_gelu: bool | None) -> bool:
    """Whether to build ``arch`` with QuickGELU for ``checkpoint`` (see the module docstring).

    An explicit ``quick_gelu`` wins; else an ``open_clip_config.json`` beside the file (the hub's
    layout) decides; else the ``-quickgelu`` suffix of the name. Contradictions warn."""
    named = arch.endswith("-quickgelu")
    if quick_gelu is not None:
        return bool(quick_gelu)
    if checkpoint is None:
        return named
    path = Path(checkpoint).expanduser()
    cfg_file = path.parent / "open_clip_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
            stated = cfg.get("model_cfg", {}).get("quick_gelu")
        except (OSError, ValueError, AttributeError):
            stated = None
        if stated and not named:
            warnings.warn(
                f"{cfg_file} says these weights use QuickGELU but architecture {arch!r} does "
                "not: building it with QuickGELU",
                stacklevel=3,
            )
            return True
        if stated is not None and not stated and named:
            warnings.warn(
                f"{cfg_file} says these weights use plain GELU but architecture {arch!r} uses "
                f"QuickGELU: the embeddings will be wrong; use {arch.removesuffix('-quickgelu')}",
                stacklevel=3,
            )
        if stated is not None:
            return named or bool(stated)
    if not named and "openai" in str(path).lower():
        warnings.warn(
            f"{path} looks like OpenAI CLIP weights, which were trained with QuickGELU, but "
            f"{arch!r} uses plain GELU: the embeddings will be wrong; use {arch}-quickgelu "
            "(or the clip-vit-* entries)",
            stacklevel=3,
        )
    return named


def _create(open_clip, arch: str, quick_gelu: bool, device: str = "cpu") -> nn.Module:
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip warns that it initialised randomly: we load next
    try:
        return open_clip.create_model(
            arch, pretrained=None, force_quick_gelu=quick_gelu, device=device
        )
    except RuntimeError as err:
        raise ValueError(f"open_clip has no architecture {arch!r} ({err})") from None
    finally:
        logger.setLevel(level)


def _fill_computed_buffers(model: nn.Module) -> bool:
    """Give the non-persistent buffers left on the meta device their values: CLIP's causal text
    attention mask (-inf above the diagonal). False if anything else is left."""
    for module in model.modules():
        for key, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if key == "attn_mask" and buf.dim() == 2 and buf.shape[0] == buf.shape[1]:
                module._buffers[key] = torch.full(tuple(buf.shape), float("-inf")).triu_(1)
            else:
                return False
    return not any(p.is_meta for p in model.parameters())


def _is_torchscript(path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _register(name: str) -> None:
    arch, repo, cam = ARCHS[name]
    url = HF.format(repo=repo)
    vit = arch.startswith("ViT")

    @register_model(
        name,
        summary=f"CLIP {arch} with OpenAI weights (open_clip, extra pairlens[clip])",
        architecture=f"open_clip {arch} (QuickGELU): image tower for pairs, text tower for "
        "text corpora",
        normalization="OpenAI CLIP mean/std",
        embeddings=EMBEDDINGS if vit else ("image",),
        default_embedding="image",
        feature_layer=f"visual.transformer.{cam}" if vit else f"visual.{cam}",
        checkpoint_format="open_clip state dict (OpenAI weights converted by open_clip / timm)",
        checkpoint_name="open_clip_pytorch_model.bin",
        download_url=url,
        extras={"requires": "open_clip_torch", "open_clip_arch": arch},
    )
    def builder(
        checkpoint=None,
        embedding: str = "image",
        quick_gelu: bool = True,
        random_weights: bool = False,
    ) -> ClipSimilarityModel:
        return build_clip(
            name, arch, checkpoint, embedding, quick_gelu, random_weights, f"download {url}"
        )


for _name in ARCHS:
    _register(_name)


@register_model(
    "clip",
    summary="any open_clip architecture from a local file: load_model('clip', arch='ViT-B-32', "
    "checkpoint=PATH) or --model clip:ViT-B-32",
    architecture="open_clip ARCH (arch= argument)",
    normalization="OpenAI CLIP mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="image",
    feature_layer="visual.transformer.resblocks.{last}.ln_1 / visual.layer4",
    checkpoint_format="open_clip state dict or open_clip training checkpoint",
    checkpoint_name="open_clip_pytorch_model.bin",
    extras={"requires": "open_clip_torch", "takes_arch": True},
)
def clip_any(
    checkpoint=None,
    embedding: str = "image",
    arch: str | None = None,
    quick_gelu: bool | None = None,
    random_weights: bool = False,
) -> ClipSimilarityModel:
    if not arch:
        raise ValueError("model 'clip' needs arch=NAME (an open_clip architecture, e.g. ViT-B-32)")
    quick_gelu = clip_quick_gelu(arch, checkpoint, quick_gelu)
    return build_clip(f"clip:{arch}", arch, checkpoint, embedding, quick_gelu, random_weights)
