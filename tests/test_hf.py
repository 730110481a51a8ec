"""Hugging Face transformers models through ``load_model("hf:PATH")`` (issue 10, item 5).

Random-weight ViT, DINOv2 with registers, CLIP (with a tiny tokenizer) and SigLIP are built from
configs, written with ``save_pretrained`` and loaded back offline: the embeddings equal the
reference ones, the default CAM layer reaches the embedding, the token grid (prefix tokens
dropped) is right at a non-square size, and a region-seeing version of each is explained by its
region.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from regions import SIZE, concentration, restrict_to_region

import pairlens

transformers = pytest.importorskip("transformers")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
REGION = (slice(16, 32), slice(48, 80))  # on a 64 x 96 input, patch 16: grid 4 x 6


def _tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single letters (no download)."""
    letters = [chr(c) for c in range(97, 123)]
    vocab = {t: i for i, t in enumerate(letters + [f"{c}</w>" for c in letters])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (folder, reference model, reference embedding function, prefix tokens)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    vit = transformers.ViTModel(
        transformers.ViTConfig(**SMALL, image_size=64, patch_size=16), add_pooling_layer=False
    )
    out["vit"] = (vit, lambda m, x: m(x, interpolate_pos_encoding=True).last_hidden_state[:, 0], 1)
    dino = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(
            **SMALL, image_size=64, patch_size=16, num_register_tokens=4
        )
    )
    out["dinov2-reg"] = (dino, lambda m, x: m(x).pooler_output, 5)
    tok = _tokenizer(root)
    text = dict(SMALL, vocab_size=len(tok), max_position_embeddings=16,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id)  # fmt: skip
    clip = transformers.CLIPModel(
        transformers.CLIPConfig(
            vision_config=dict(SMALL, image_size=64, patch_size=16), text_config=text,
            projection_dim=16,
        )
    )
    out["clip"] = (
        clip,
        lambda m, x: m.get_image_features(pixel_values=x, interpolate_pos_encoding=True)
        .pooler_output,
        1,
    )
    siglip = transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**SMALL, image_size=64, patch_size=16)
    )
    out["siglip"] = (
        siglip, lambda m, x: m(x, interpolate_pos_encoding=True).pooler_output, 0
    )
    folders = {}
    for name, (model, ref, prefix) in out.items():
        folder = root / name
        model.eval().save_pretrained(folder)
        if name == "clip":
            tok.save_pretrained(folder)
            transformers.CLIPImageProcessor(
                size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}
            ).save_pretrained(folder)
        folders[name] = (folder, model, ref, prefix)
    return folders


@pytest.mark.parametrize("name", ["vit", "dinov2-reg", "clip", "siglip"])
def test_hf_models_load_offline_and_are_explained_by_their_region(folders, name):
    folder, ref_model, ref, prefix = folders[name]
    model = pairlens.load_model(f"hf:{folder}")
    assert model.name == f"hf:{folder}"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 96, generator=g)  # non-square: a 4 x 6 patch grid
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), ref(ref_model, x), atol=1e-5, rtol=1e-4)
        _, a = model.embed_with_features(x)
    assert a.shape[1] == prefix + 24
    grid = model.to_grid(a, (64, 96))
    torch.testing.assert_close(grid, a[:, prefix:].transpose(1, 2).reshape(2, 32, 4, 6))
    exp = pairlens.explain(model, x, x.flip(0), method="grad-cam")  # default layer reaches z
    assert exp.maps[0].abs().sum() > 0
    restrict_to_region(model.encoder, model.feature_layer, "tokens", REGION, 16, SIZE, prefix)
    for method in ("grad-cam", "interaction-cam", "input-x-gradient"):
        exp = pairlens.explain(model, x, x.flip(0), method=method)
        for m in (*exp.maps[0], *exp.maps[1]):
            assert concentration(m, REGION, dilate=16) > 0.9, method


def test_hf_clip_processor_text_tower_and_text_target(folders):
    folder, clip, _, _ = folders["clip"]
    model = pairlens.load_model(f"hf:{folder}")
    assert model.input_size == (64, 64) and abs(model.crop_fraction - 64 / 73) < 1e-6
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.48145466, 0.4578275,
                                                                    0.40821073]))  # fmt: skip
    assert model.has_text_tower
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        z = model.embed_text(["a cat", "dog"])
        want = clip.get_text_features(**tok(["a cat", "dog"], padding=True, return_tensors="pt"))
    torch.testing.assert_close(z, want.pooler_output, atol=1e-5, rtol=1e-4)
    x = torch.randn(2, 3, 64, 64)
    exp = pairlens.explain(model, x, target="a photo of a cat", method="grad-cam")
    assert exp.maps[1] is None and exp.target["text"] == "a photo of a cat"
    with torch.no_grad():
        t = model.embed_text("a photo of a cat").expand(2, -1)
        want = torch.nn.functional.cosine_similarity(model.embed(x), t)
    torch.testing.assert_close(exp.score, want, atol=1e-5, rtol=1e-4)
    backbone = pairlens.load_model(f"hf:{folder}", embedding="backbone")
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.embed(x) @ clip.visual_projection.weight.T, model.embed(x)
        )


def test_hf_errors_are_one_line(tmp_path, folders):
    with pytest.raises(ValueError, match="never downloads") as info:
        pairlens.load_model("hf:nobody/not-a-cached-model")
    assert "\n" not in str(info.value)
    folder = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(**SMALL, vocab_size=10)).save_pretrained(folder)
    with pytest.raises(ValueError, match="not supported"):
        pairlens.load_model(f"hf:{folder}")
    siglip = pairlens.load_model(f"hf:{folders['siglip'][0]}")
    with pytest.raises(ValueError, match="no text tower"):
        siglip.embed_text("a cat")
