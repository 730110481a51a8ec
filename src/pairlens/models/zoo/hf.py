"""Hugging Face ``transformers`` vision models from local files (optional extra ``pairlens[hf]``).

``load_model("hf:PATH")`` loads a ``save_pretrained`` / ``from_pretrained`` folder, or a model id
already in the local Hugging Face cache (``hf:facebook/dinov2-small``), always with
``local_files_only=True``: nothing is downloaded, a model missing from the cache is a one-line
error. Supported ``model_type`` values:

* ``vit``: embedding = class token of ``last_hidden_state``;
* ``dinov2``, ``dinov2_with_registers``: ``pooler_output`` (the normed class token; the register
  tokens are prefix tokens);
* ``clip``: the projected image embedding (``get_image_features``); ``clip_vision_model``:
  ``pooler_output`` (no projection);
* ``siglip``, ``siglip_vision_model``: ``pooler_output`` of the attention-pooling head.

CAM layer: for the class-token models, the norm entering the last block (``layernorm_before`` /
``norm1`` / ``layer_norm1`` of the last layer, found by
:func:`pairlens.models.layouts.suggest_feature_layer` whatever the module paths of the installed
transformers version): the class token never sees the last block's output patch tokens (their
gradients are zero). SigLIP has no class token and its pooling head attends to every token, so its
CAM layer is ``post_layernorm``, the last block's normalised output.

``embedding="backbone"`` is the pooled vision output before CLIP's projection (the same as
``image`` for the others). The image tower runs with ``interpolate_pos_encoding=True`` where the
model takes it (DINOv2 always interpolates), so any input size works. Normalisation and input size
come from the folder's image-processor config (``preprocessor_config.json``: ``image_mean``,
``image_std``, ``crop_size`` / ``size``, and ``size.shortest_edge / crop_size`` as the crop
fraction); without one, the model type's published defaults are used (ViT and SigLIP 0.5 / 0.5,
DINOv2 ImageNet, CLIP OpenAI) at ``config.image_size``. CLIP and SigLIP keep their text tower:
``model.embed_text(captions)`` uses the folder's tokenizer (SigLIP pads to the maximum length, as
it was trained).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pairlens.models.checkpoint import CheckpointError
from pairlens.models.layouts import suggest_feature_layer
from pairlens.models.registry import register_model
from pairlens.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from pairlens.models.zoo.common import check_embedding

EMBEDDINGS = ("image", "backbone")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# model type: default (mean, std) without a processor config
TYPES = {
    "vit": (HALF, HALF),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (OPENAI_MEAN, OPENAI_STD),
    "clip_vision_model": (OPENAI_MEAN, OPENAI_STD),
    "siglip": (HALF, HALF),
    "siglip_vision_model": (HALF, HALF),
}


def import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "hf: models need Hugging Face transformers: pip install 'pairlens[hf]'"
        ) from err
    return transformers


class HFImageEncoder(nn.Module):
    """A transformers vision model (+ optional projection): (B, 3, H, W) -> embedding (B, D).

    ``vision`` is the vision transformer (its parameter names are the checkpoint's), ``pool``
    says which output is the embedding: ``"cls"`` (class token of ``last_hidden_state``) or
    ``"pooler"`` (``pooler_output``)."""

    def __init__(self, vision: nn.Module, pool: str, projection: nn.Module | None = None):
        super().__init__()
        self.vision = vision
        self.pool = pool
        self.projection = projection if projection is not None else nn.Identity()
        params = inspect.signature(vision.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in params

    def forward(self, x: Tensor) -> Tensor:
        kw = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.vision(pixel_values=x, return_dict=True, **kw)
        z = out.last_hidden_state[:, 0] if self.pool == "cls" else out.pooler_output
        return self.projection(z)


class HFSimilarityModel(SimilarityModel):
    """A transformers image tower as a :class:`SimilarityModel`; CLIP / SigLIP keep their text
    tower for ``embed_text``."""

    def __init__(
        self,
        encoder: HFImageEncoder,
        text: nn.ModuleDict | None = None,
        tokenizer: Any = None,
        pad_to_max: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(encoder, **kw)
        self.text = text
        self._tokenizer = tokenizer
        self._pad_to_max = pad_to_max

    @property
    def has_text_tower(self) -> bool:  # type: ignore[override]
        return self.text is not None

    def embed_text(self, texts: str | Sequence[str]) -> Tensor:
        """Caption embeddings (T, D) in the image embedding space (not normalised)."""
        if self.text is None:
            return super().embed_text(texts)
        if self._tokenizer is None:
            raise ValueError(
                f"model {self.name!r} has a text tower but its folder holds no tokenizer files"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self._tokenizer(
            texts,
            padding="max_length" if self._pad_to_max else True,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        kw = {"input_ids": tokens["input_ids"]}
        if "attention_mask" in tokens and not self._pad_to_max:
            kw["attention_mask"] = tokens["attention_mask"]
        out = self.text["model"](**kw, return_dict=True)
        return self.text["projection"](out.pooler_output).float()


def _from_pretrained(transformers: Any, loader: Any, source: str, what: str, **kw: Any) -> Any:
    try:
        return loader.from_pretrained(source, local_files_only=True, **kw)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"hf:{source}: cannot load the {what} from local files ({reason}); give a folder "
            "written by save_pretrained or a model id already in the Hugging Face cache "
            "(PairLens never downloads)"
        ) from None


def _preprocessing(transformers: Any, source: str, model_type: str, config: Any) -> dict:
    mean, std = TYPES[model_type]
    size = getattr(config, "image_size", 224)
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    out = {"mean": tuple(mean), "std": tuple(std), "size": size, "crop": 1.0}
    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / "preprocessor_config.json").is_file():
        return out
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return out
    if getattr(proc, "image_mean", None) is not None:
        out["mean"], out["std"] = tuple(proc.image_mean), tuple(proc.image_std)
    crop = _size(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", 0) else {}
    resize = _size(getattr(proc, "size", None))
    if crop.get("height"):
        out["size"] = (int(crop["height"]), int(crop["width"]))
        if resize.get("shortest_edge"):
            out["crop"] = min(1.0, min(out["size"]) / int(resize["shortest_edge"]))
    elif resize.get("height"):
        out["size"] = (int(resize["height"]), int(resize["width"]))
    return out


def _size(value: Any) -> dict[str, Any]:
    """An image processor's size (a dict or transformers' SizeDict) as a plain dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    keys = ("height", "width", "shortest_edge", "longest_edge")
    return {k: getattr(value, k) for k in keys if getattr(value, k, None) is not None}


@register_model(
    "hf",
    summary="a Hugging Face transformers vision model from a local folder or the local HF cache "
    "(ViT, DINOv2, CLIP, SigLIP; extra pairlens[hf]): --model hf:PATH",
    architecture="transformers AutoModel of the folder's config (arch= argument: folder or id)",
    normalization="the folder's image-processor config (mean/std, size, crop)",
    embeddings=EMBEDDINGS,
    default_embedding="image",
    feature_layer="the norm entering the last block (post_layernorm for SigLIP)",
    checkpoint_format="save_pretrained folder (config.json, model.safetensors, "
    "preprocessor_config.json, tokenizer files)",
    extras={"takes_arch": True, "requires": "transformers"},
)
def hf_any(
    checkpoint=None,
    embedding: str = "image",
    arch: str | None = None,
    feature_layer: str | None = None,
    random_weights: bool = False,
) -> HFSimilarityModel:
    transformers = import_transformers()
    name = f"hf:{arch}"
    check_embedding(name, embedding, EMBEDDINGS)
    if not arch:
        raise ValueError("model 'hf' needs a folder or model id: --model hf:PATH")
    if checkpoint is not None:
        raise ValueError(f"model {name!r} reads its weights from the folder; drop --checkpoint")
    source = str(Path(arch).expanduser()) if Path(arch).expanduser().exists() else arch
    config = _from_pretrained(transformers, transformers.AutoConfig, source, "config")
    model_type = config.model_type
    if model_type not in TYPES:
        raise ValueError(
            f"{name}: model type {model_type!r} is not supported; supported: {', '.join(TYPES)} "
            "(or wrap the module yourself: pairlens.SimilarityModel(module, feature_layer=...))"
        )
    kw = {"add_pooling_layer": False} if model_type == "vit" else {}  # the pooler is unused
    if random_weights:
        net = transformers.AutoModel.from_config(config, **kw)
    else:
        net = _from_pretrained(transformers, transformers.AutoModel, source, "model weights", **kw)
    net = net.float().eval()
    text = tokenizer = None
    if model_type in ("clip", "siglip"):
        vision = net.vision_model
        projection = getattr(net, "visual_projection", None) if embedding == "image" else None
        text_projection = getattr(net, "text_projection", None)
        text = nn.ModuleDict(
            {
                "model": net.text_model,
                "projection": text_projection if text_projection is not None else nn.Identity(),
            }
        )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, TypeError):
            tokenizer = None
    else:
        vision, projection = getattr(net, "vision_model", net), None
    pool = "cls" if model_type == "vit" else "pooler"
    encoder = HFImageEncoder(vision, pool, projection)
    if feature_layer is None:
        names = [n for n, _ in vision.named_modules()]
        if model_type.startswith("siglip"):
            inner = next((n for n in names if n.rpartition(".")[2] == "post_layernorm"), None)
        else:
            inner = suggest_feature_layer(vision)
        if inner is None:
            raise ValueError(f"{name}: no CAM layer found; pass feature_layer=")
        feature_layer = f"vision.{inner}"
    prep = _preprocessing(transformers, source, model_type, config)
    return HFSimilarityModel(
        encoder,
        text=text,
        tokenizer=tokenizer,
        pad_to_max=model_type == "siglip",
        feature_layer=feature_layer,
        input_size=prep["size"],
        mean=prep["mean"],
        std=prep["std"],
        crop_fraction=prep["crop"],
        name=name,
    ).eval()
