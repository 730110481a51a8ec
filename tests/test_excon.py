"""SupCon / SupConOri / ExCon / ExConB training, cluttered digits, eval-classifier, study."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pairlens.models.bundled import ContrastiveNet, projection_head
from pairlens.models.similarity import SimilarityModel
from pairlens.training import supcon as supcon_mod
from pairlens.training.augment import AugmentConfig, SimCLRAugment
from pairlens.training.simclr import ContrastiveTrainer, TrainConfig, TrainingInterrupted
from pairlens.training.supcon import (
    BACKGROUND_LABEL,
    SupervisedContrastiveLoss,
    SupervisedSettings,
    class_gradcam,
    explanation_mask,
    mask_images,
    train_supervised,
)


# ---------------------------------------------------------------------- helpers
def tiny_backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    )


def tiny_net(seed: int = 0) -> ContrastiveNet:
    return ContrastiveNet(tiny_backbone(seed), projection_head(16, 16, 8))


def run_cli(argv: list[str]) -> int:
    """``pairlens ARGV``."""
    from pairlens.cli import main

    return main(argv)


def brute_force_eq3(z: torch.Tensor, labels: torch.Tensor, background: torch.Tensor,
                    tau: float) -> torch.Tensor:
    """Eq. 3 of seed 003 by loops: anchors and positives are non-background rows only."""
    n = len(z)
    per_anchor = []
    for i in range(n):
        if background[i]:
            continue
        pos = [p for p in range(n) if p != i and not background[p] and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[a] / tau) for a in range(n) if a != i)
        per_anchor.append(-sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in pos)
                          / len(pos))
    return torch.stack(per_anchor).mean()


# ---------------------------------------------------------------------- Grad-CAM and masking
def test_masking_keeps_exactly_the_pixels_above_the_threshold():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 8, 8, generator=g) * 4 + 1
    # place exact min, max and a pixel exactly at the threshold (normalised value 0.5)
    maps[:, 0, 0], maps[:, 0, 1], maps[:, 0, 2] = 1.0, 5.0, 3.0
    maps[2] = 7.0  # a constant map: nothing is above the threshold
    x = torch.randn(3, 3, 8, 8, generator=g)
    masked = mask_images(x, explanation_mask(maps, 0.5))
    for b in range(3):
        lo, hi = float(maps[b].min()), float(maps[b].max())
        for r in range(8):
            for c in range(8):
                norm = (float(maps[b, r, c]) - lo) / (hi - lo) if hi > lo else 0.0
                expected = x[b, :, r, c] if norm > 0.5 else torch.zeros(3)
                assert torch.equal(masked[b, :, r, c], expected), (b, r, c)
    assert torch.equal(masked[:2, :, 0, 2], torch.zeros(2, 3))  # exactly at τ: removed
    assert torch.equal(masked[:2, :, 0, 1], x[:2, :, 0, 1])  # the maximum: kept
    assert torch.equal(masked[2], torch.zeros(3, 8, 8))


def test_class_gradcam_matches_definition():
    backbone = tiny_backbone(1).eval()
    classifier = nn.Linear(16, 4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 3])
    cam = class_gradcam(backbone, classifier, x, target)
    assert cam.shape == (2, 16, 16)
    for b in range(2):
        a = backbone(x[b : b + 1]).detach().requires_grad_(True)
        logit = classifier(a.mean(dim=(2, 3)))[0, target[b]]
        (grad,) = torch.autograd.grad(logit, a)
        w = grad.mean(dim=(2, 3))[0]  # (C,)
        raw = torch.clamp(sum(w[k] * a[0, k] for k in range(16)), min=0).detach()
        up = F.interpolate(raw[None, None], size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(cam[b], up[0, 0], atol=1e-5)


# ---------------------------------------------------------------------- explanation-driven views
def _views_setup(mode: str, n: int = 6):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 0, 1])[:n]
    net = tiny_net(0)
    classifier = nn.Linear(16, 3)
    with torch.no_grad():  # always predicts class 0 (bias dominates), non-trivial Grad-CAM
        classifier.weight.mul_(0.01)
        classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    config = TrainConfig(epochs=1, batch_size=n, device="cpu", progress=False, seed=0)
    loss = SupervisedContrastiveLoss(mode, SimCLRAugment(AugmentConfig.digits()), classifier,
                                     temperature=0.2, start_epoch=0, input_size=(16, 16))
    trainer = ContrastiveTrainer(net, images, labels, config, loss, mean=(0.5,) * 3,
                                 std=(0.25,) * 3)
    return trainer, loss, images, labels


def test_exconb_background_rows_reach_the_loss_only_as_negatives(monkeypatch):
    trainer, loss, images, labels = _views_setup("exconb")
    seen = {}

    def recording_loss(features, labels_, temperature=0.1, background=None):
        seen.update(features=features.detach().clone(), labels=labels_.clone(),
                    background=background.clone(), temperature=temperature)
        return supcon_mod_loss(features, labels_, temperature=temperature, background=background)

    from pairlens.training.losses import supcon_loss as supcon_mod_loss

    monkeypatch.setattr(supcon_mod.losses, "supcon_loss", recording_loss)
    state = trainer.generator.get_state()
    value, metrics = loss(trainer, images, labels, torch.arange(len(images)))
    accepted = labels == 0  # the classifier always says 0
    n, n_bg = len(images), 2 * int((~accepted).sum())
    assert seen["labels"].shape == (2 * n + n_bg,)
    assert torch.equal(seen["labels"][: 2 * n], torch.cat([labels, labels]))
    assert (seen["labels"][2 * n :] == BACKGROUND_LABEL).all()
    assert torch.equal(seen["background"], torch.arange(2 * n + n_bg) >= 2 * n)
    assert metrics["masked_accepted"] == pytest.approx(float(accepted.float().mean()))
    assert metrics["background_rows"] == n_bg
    # the loss is eq. 3: background rows never anchors or positives, always in the denominators
    z, lab, bg = seen["features"], seen["labels"], seen["background"]
    assert float(value.detach()) == pytest.approx(float(brute_force_eq3(z, lab, bg, 0.2)), rel=1e-5)
    # relabelling the background rows (even with a foreground label) changes nothing...
    same = supcon_mod_loss(z, torch.where(bg, torch.zeros_like(lab), lab), 0.2, background=bg)
    assert float(same) == pytest.approx(float(value.detach()), rel=1e-6)
    # ...but removing them from the denominators does
    fewer = supcon_mod_loss(z[~bg], lab[~bg], 0.2)
    assert abs(float(fewer) - float(value.detach())) > 1e-4

    # views: the masked image replaced the first random view exactly where it was accepted
    trainer.generator.set_state(state)
    batch = loss.make_views(trainer, images, labels)
    trainer.generator.set_state(state)
    v1 = trainer.normalize(loss.augment(images, trainer.generator))
    v2 = trainer.normalize(loss.augment(images, trainer.generator))
    x0 = trainer.normalize(images)
    trainer.net.eval()
    masked, _ = supcon_mod.explanation_masked(trainer.net.backbone, loss.classifier, x0, labels)
    for i in range(n):
        assert torch.allclose(batch.views[i], masked[i] if accepted[i] else v1[i], atol=1e-6)
    assert torch.allclose(batch.views[n : 2 * n], v2, atol=1e-6)
    rejected = masked[~accepted]
    k = len(rejected)
    assert torch.allclose(batch.views[2 * n : 2 * n + k], rejected, atol=1e-6)
    assert torch.allclose(batch.views[2 * n + k :], rejected, atol=1e-6)


def test_excon_falls_back_to_random_views_and_supcon_never_masks():
    trainer, loss, images, labels = _views_setup("excon")
    batch = loss.make_views(trainer, images, labels)
    n = len(images)
    assert batch.views.shape[0] == 2 * n and not batch.background.any()
    assert torch.equal(batch.accepted, labels == 0)
    trainer2, loss2, _, _ = _views_setup("supcon")
    plain = loss2.make_views(trainer2, images, labels)
    assert plain.accepted is None and plain.views.shape[0] == 2 * n
    # ExCon's rejected images kept exactly the random view SupCon drew with the same generator
    rejected = ~(labels == 0)
    assert torch.allclose(batch.views[:n][rejected], plain.views[:n][rejected], atol=1e-6)
    assert torch.allclose(batch.views[n:], plain.views[n:], atol=1e-6)
    # before the start epoch no explanations are made
    loss.start_epoch = 1
    assert loss.make_views(trainer, images, labels).accepted is None


# ---------------------------------------------------------------------- training, resume
def _tiny_data(n: int = 24, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    for i in range(n):  # a class-dependent bright square at a random place
        r, c = torch.randint(0, 20, (2,), generator=g).tolist()
        x[i, int(y[i]), r : r + 12, c : c + 12] = 1.0
    return x, y


def _train(out, mode="exconb", epochs=2, resume=False):
    x, y = _tiny_data()
    xv, yv = _tiny_data(12, seed=1)
    config = TrainConfig(epochs=epochs, batch_size=6, lr=1e-2, temperature=0.2, seed=4,
                         out=str(out), resume=resume, device="cpu", progress=False,
                         warmup_epochs=0.5)
    settings = SupervisedSettings(mode=mode, start_epoch=1, n_classes=3, classifier_lr=1e-2)
    return train_supervised(x, y, xv, yv, "digits-cnn", config, settings, plot=False)


@pytest.mark.parametrize("mode", ["exconb", "supcon-ori"])
def test_resume_after_interruption_reproduces_the_run(tmp_path, monkeypatch, mode):
    net_a, clf_a, log_a = _train(tmp_path / "full", mode)
    original_call = SupervisedContrastiveLoss.__call__
    original_epoch = supcon_mod.ClassifierEpochs.run_epoch
    if mode == "exconb":  # crash in the middle of epoch 2 (explanations on since epoch 2)
        def crashing(self, trainer, images, labels, indices):
            if trainer.step == 5:
                raise TrainingInterrupted("simulated crash")
            return original_call(self, trainer, images, labels, indices)

        monkeypatch.setattr(SupervisedContrastiveLoss, "__call__", crashing)
    else:  # crash in the classifier phase, after its first epoch
        def crashing_epoch(self, net, generator, row, history, *args, **kw):
            if row["epoch"] == 4:
                raise TrainingInterrupted("simulated crash")
            return original_epoch(self, net, generator, row, history, *args, **kw)

        monkeypatch.setattr(supcon_mod.ClassifierEpochs, "run_epoch", crashing_epoch)
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path / "crash", mode)
    monkeypatch.undo()
    net_b, clf_b, log_b = _train(tmp_path / "crash", mode, resume=True)
    for a, b in ((net_a, net_b), (clf_a, clf_b)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert [r.get("loss") for r in log_a] == [r.get("loss") for r in log_b]
    assert [r["val_accuracy"] for r in log_a if "val_accuracy" in r] == [
        r["val_accuracy"] for r in log_b if "val_accuracy" in r]
    if mode == "exconb":
        assert "masked_accepted" in log_a[-1] and "masked_accepted" not in log_a[0]
    else:
        assert len(log_a) == 4 and log_a[-1]["phase"] == "classifier"
    with pytest.raises(ValueError, match="start_epoch"):  # other settings cannot resume
        x, y = _tiny_data()
        config = TrainConfig(epochs=2, batch_size=6, lr=1e-2, temperature=0.2, seed=4,
                             out=str(tmp_path / "full"), resume=True, device="cpu",
                             progress=False, warmup_epochs=0.5)
        train_supervised(x, y, x, y, "digits-cnn", config,
                         SupervisedSettings(mode=mode, start_epoch=2, n_classes=3,
                                            classifier_lr=1e-2), plot=False)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    x, y = _tiny_data(30)
    for i in range(len(x)):
        d = root / f"class{int(y[i])}"
        d.mkdir(exist_ok=True)
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("mode", ["supcon", "supcon-ori", "excon", "exconb", "simclr"])
def test_every_training_mode_runs(tmp_path, class_folder, mode):
    out = tmp_path / mode
    args = ["train", mode, "--data", str(class_folder), "--arch", "digits-cnn", "--epochs", "2",
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--quiet"]
    if mode != "simclr":
        args += ["--start-epoch", "1"]
    assert run_cli(args) == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    if mode == "simclr":
        return
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()
    if mode == "supcon-ori":
        assert not rows[0].get("val_accuracy")  # no classifier while the encoder trains
        cls_rows = list(csv.DictReader(open(out / "classifier_log.csv")))
        assert [int(r["epoch"]) for r in cls_rows] == [3, 4]
        assert all(0 <= float(r["val_accuracy"]) <= 1 for r in cls_rows)
    else:
        assert all(0 <= float(r["train_accuracy"]) <= 1 for r in rows)
        assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    if mode in ("excon", "exconb"):
        assert rows[0]["masked_accepted"] == "" and 0 <= float(rows[1]["masked_accepted"]) <= 1
    if mode != "exconb":
        return
    # eval-classifier on the result
    ev = tmp_path / "eval"
    assert run_cli(["eval-classifier", "--checkpoint", str(out / "best.pt"), "--data",
                    str(class_folder),
                    "--split", "all", "--out", str(ev), "--device", "cpu", "--quiet",
                    "--infidelity-samples", "2"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_images"] == 30 and 0 <= metrics["top1_accuracy"] <= 1
    assert (ev / "tsne.png").is_file()


# ---------------------------------------------------------------------- cluttered digits
def test_cluttered_digits_deterministic_and_on_photo_crops():
    from pairlens.data import bundled, cluttered

    x, y = cluttered.cluttered_digits("val", seed=0)
    cluttered._generate.cache_clear()
    x2, y2 = cluttered.cluttered_digits("val", seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(y, bundled.digits("val", seed=0)[1])
    x3, _ = cluttered.cluttered_digits("val", seed=1)
    assert not torch.equal(x[:20], x3[:20])
    assert x.shape == (len(y), 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    lay = cluttered.cluttered_layout("val", seed=0)
    d = cluttered.DIGIT_SIZE
    for i in range(0, len(y), 37):
        bg = cluttered.photo_crop(int(lay["photo"][i]), int(lay["crop_top"][i]),
                                  int(lay["crop_left"][i]), int(lay["crop_side"][i]))
        r, c = int(lay["digit_top"][i]), int(lay["digit_left"][i])
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[r : r + d, c : c + d] = False
        assert torch.equal(x[i][:, outside], bg[:, outside])  # exactly the photo crop
        a = lay["alpha"][i]
        expected = (1 - a) * bg[:, r : r + d, c : c + d] + a * lay["colour"][i]
        assert torch.allclose(x[i][:, r : r + d, c : c + d], expected, atol=1e-6)
        assert float(a.max()) > 0.5  # a digit is really there
    assert float(x.std(dim=(1, 2, 3)).median()) > 0.1  # cluttered, not flat backgrounds
    with pytest.raises(ValueError):
        cluttered.cluttered_digits("nope")


# ---------------------------------------------------------------------- eval-classifier
def _tiny_classifier_model():
    backbone = tiny_backbone(3).eval()
    model = SimilarityModel(backbone, input_size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(5)
    model.classifier = nn.Linear(16, 3).eval()
    return model.eval()


def test_eval_classifier_metrics_match_brute_force():
    from pairlens.training.excon_eval import evaluate_classifier, keep_top_fraction

    model = _tiny_classifier_model()
    g = torch.Generator().manual_seed(7)
    images = torch.rand(5, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    out = evaluate_classifier(model, images, labels, batch_size=3, infidelity_samples=4,
                              noise_std=0.2, seed=11)

    def probs(x):
        return F.softmax(model.classifier(model.encoder(x).mean(dim=(2, 3))), dim=1)

    x = model.normalize(images)
    with torch.no_grad():
        p_all = probs(x)
    pred = p_all.argmax(1)
    assert out["top1_accuracy"] == pytest.approx(float((pred == labels).float().mean()))
    maps = class_gradcam(model.encoder, model.classifier, x, pred)
    for q in (0.15, 0.30, 0.45):
        drops, incs = [], []
        for b in range(5):
            values = maps[b].flatten().tolist()
            order = sorted(range(256), key=lambda j: (-values[j], j))[: round(q * 256)]
            keep = torch.zeros(256)
            keep[order] = 1
            xm = x[b] * keep.view(1, 16, 16)
            with torch.no_grad():
                p2 = float(probs(xm[None])[0, pred[b]])
            p = float(p_all[b, pred[b]])
            drops.append(max(0.0, p - p2) / p)
            incs.append(float(p2 > p))
        assert out[f"drop@{q:.2f}"] == pytest.approx(sum(drops) / 5, abs=1e-6)
        assert out[f"increase@{q:.2f}"] == pytest.approx(sum(incs) / 5)
    # infidelity (Yeh et al. 2019 with the optimal scale beta), same perturbations
    gen = torch.Generator().manual_seed(11)
    infid = []
    for sl in (slice(0, 3), slice(3, 5)):
        xb, mb, pb = x[sl], maps[sl], pred[sl]
        nb = len(xb)
        noise = torch.randn((nb * 4, 3, 16, 16), generator=gen) * 0.2
        lo = mb.flatten(1).min(1).values.view(-1, 1, 1)
        hi = mb.flatten(1).max(1).values.view(-1, 1, 1)
        attr = ((mb - lo) / (hi - lo)).unsqueeze(1).expand(-1, 3, -1, -1)
        for b in range(nb):
            a_list, d_list = [], []
            for s in range(4):
                eps = noise[b * 4 + s]
                a_list.append(float((eps * attr[b]).sum()))
                with torch.no_grad():
                    d_list.append(float(probs(xb[b : b + 1])[0, pb[b]]
                                        - probs((xb[b] - eps)[None])[0, pb[b]]))
            pairs = list(zip(a_list, d_list, strict=True))
            beta = sum(a * d for a, d in pairs) / sum(a * a for a in a_list)
            infid.append(sum((beta * a - d) ** 2 for a, d in pairs) / 4)
    assert out["infidelity"] == pytest.approx(sum(infid) / 5, rel=1e-4)
    # keep_top_fraction: ties go to the lower flat index
    flat = torch.tensor([[[1.0, 2.0], [2.0, 0.0]]])
    assert keep_top_fraction(flat, 0.25).flatten().tolist() == [False, True, False, False]
    assert keep_top_fraction(flat, 0.5).flatten().tolist() == [False, True, True, False]


# ---------------------------------------------------------------------- study report
def test_study_table_and_small_study(tmp_path, class_folder):
    from pairlens.training.study import table_markdown

    rows = [{"mode": "excon", "top1_accuracy": a, "infidelity": 0.1, "best_epoch": 2}
            for a in (0.5, 0.7)] + [{"mode": "supcon", "top1_accuracy": 0.6, "best_epoch": 1}]
    table = table_markdown(rows)
    std = math.sqrt(((50 - 60) ** 2 + (70 - 60) ** 2) / 1)
    assert f"60.00 ± {std:.2f}" in table and "ExCon (n=2)" in table and "SupCon (n=1)" in table
    assert table.index("ExCon") < table.index("SupCon")
    out = tmp_path / "study"
    assert run_cli(["study", "excon", "--data", str(class_folder), "--seeds", "0-1", "--modes",
                    "supcon,excon", "--epochs", "1", "--batch-size", "4", "--start-epoch", "0",
                    "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    results = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["mode"], r["seed"]) for r in results) == [
        ("excon", "0"), ("excon", "1"), ("supcon", "0"), ("supcon", "1")]
    assert (out / "val_curves.png").is_file() and (out / "tsne_excon.png").is_file()
    assert "ExCon (n=2)" in (out / "table.md").read_text()
    # rerunning continues: everything is finished, nothing is retrained (the old count form
    # "--seeds 2" still means seeds 0-1)
    before = (out / "excon" / "seed1" / "model.pt").stat().st_mtime_ns
    assert run_cli(["study", "excon", "--data", str(class_folder), "--seeds", "2", "--modes",
                    "supcon,excon", "--epochs", "1", "--batch-size", "4", "--start-epoch", "0",
                    "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert (out / "excon" / "seed1" / "model.pt").stat().st_mtime_ns == before
