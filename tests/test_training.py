"""SimCLR trainer: exact resumption, checkpoints, CSV log, augmentations, probe, CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from PIL import Image
from torch import nn

from pairlens.cli import main as cli_main
from pairlens.models.bundled import ContrastiveNet, projection_head
from pairlens.training.augment import AugmentConfig, SimCLRAugment
from pairlens.training.simclr import (
    ContrastiveTrainer,
    SimCLRLoss,
    TrainConfig,
    TrainingInterrupted,
    fit_linear_probe,
    knn_accuracy,
    load_trained,
)


# ---------------------------------------------------------------------- tiny trainer fixtures
def tiny_net(seed: int = 0) -> ContrastiveNet:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    )
    return ContrastiveNet(backbone, projection_head(16, 16, 8))


def tiny_images(n: int = 24, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_trainer(out, epochs=3, resume=False, net_seed=0, fail_at_step=None, lr=1e-2):
    config = TrainConfig(epochs=epochs, batch_size=6, lr=lr, temperature=0.5, seed=3,
                         out=str(out), resume=resume, device="cpu", progress=False,
                         warmup_epochs=0.5)
    loss = SimCLRLoss(SimCLRAugment(AugmentConfig.digits()), temperature=0.5)
    if fail_at_step is not None:
        inner = loss

        def loss(trainer, images, labels, indices):  # noqa: F811 - crash mid-epoch
            if trainer.step == fail_at_step:
                raise TrainingInterrupted("simulated crash")
            return inner(trainer, images, labels, indices)

    return ContrastiveTrainer(tiny_net(net_seed), tiny_images(), None, config, loss,
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    full = make_trainer(tmp_path / "full")
    full_log = full.fit()
    steps_per_epoch = full.steps_per_epoch  # 24 // 6 = 4
    assert steps_per_epoch == 4 and full.step == 12

    crashed = make_trainer(tmp_path / "crash", fail_at_step=steps_per_epoch + 2)  # mid epoch 2
    with pytest.raises(TrainingInterrupted):
        crashed.fit()
    saved = torch.load(tmp_path / "crash" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1

    # a fresh process would build the net with another init: the checkpoint must overwrite it
    resumed = make_trainer(tmp_path / "crash", resume=True, net_seed=123)
    resumed_log = resumed.fit()
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in full_log]
    # and training did change the weights (the comparison is not vacuous)
    assert not torch.equal(a["projector.0.weight"], tiny_net(0).state_dict()["projector.0.weight"])


def test_checkpoint_log_and_refusals(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "generator", "torch_rng", "epoch", "log"):
        assert key in state
    with pytest.raises(FileExistsError):
        make_trainer(tmp_path, epochs=2).fit()
    with pytest.raises(ValueError, match="lr"):
        make_trainer(tmp_path, epochs=2, resume=True, lr=0.5).fit()
    # resuming a finished run trains nothing more
    again = make_trainer(tmp_path, epochs=2, resume=True)
    before = {k: v.clone() for k, v in torch.load(tmp_path / "checkpoint.pt",
                                                   weights_only=True)["model"].items()}
    again.fit()
    for k, v in again.net.state_dict().items():
        assert torch.equal(v, before[k])


def test_training_lowers_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6, lr=3e-2)
    log = trainer.fit()
    assert log[-1]["loss"] < log[0]["loss"]


# ---------------------------------------------------------------------- augmentations
def identity_config(**kw) -> AugmentConfig:
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, jitter_p=0.0,
                grayscale_p=0.0, blur_p=0.0)
    base.update(kw)
    return AugmentConfig(**base)


def test_augment_seeded_and_per_image():
    x = tiny_images(4, 32).repeat(2, 1, 1, 1)
    aug = SimCLRAugment(AugmentConfig.photos())
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[:4], a[4:])  # same image, different views
    assert a.min() >= 0 and a.max() <= 1


def test_augment_identity_and_out_size():
    x = tiny_images(3, 20)
    out = SimCLRAugment(identity_config())(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)
    resized = SimCLRAugment(identity_config(), out_size=(12, 10))(x, torch.Generator())
    assert resized.shape == (3, 3, 12, 10)


def test_augment_crop_scale_and_flip():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    half = SimCLRAugment(identity_config(crop_scale=(0.25, 0.25)))(ramp, torch.Generator())
    span = half[:, 0, 0, -1] - half[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.03)  # crop width = half
    flipped = SimCLRAugment(identity_config(flip=True))(ramp, torch.Generator().manual_seed(0))
    is_same = (flipped - ramp).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_flip = (flipped - ramp.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((is_same | is_flip).all()) and is_same.any() and is_flip.any()
    no_flip = SimCLRAugment(identity_config(flip=False))(ramp, torch.Generator().manual_seed(0))
    assert torch.allclose(no_flip, ramp, atol=1e-5)


def test_augment_grayscale_jitter_blur():
    x = tiny_images(4, 24)
    g = SimCLRAugment(identity_config(grayscale_p=1.0))(x, torch.Generator())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for ch in range(3):
        assert torch.allclose(g[:, ch], luma, atol=1e-5)
    j = SimCLRAugment(identity_config(jitter_p=1.0))(x, torch.Generator())
    assert (j - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image jittered
    flat = torch.full((2, 3, 24, 24), 0.4)
    blurred = SimCLRAugment(identity_config(blur_p=1.0))(flat, torch.Generator())
    assert torch.allclose(blurred, flat, atol=1e-6)  # blur keeps a constant image
    noisy_blur = SimCLRAugment(identity_config(blur_p=1.0, blur_sigma=(1.5, 1.5)))(
        x, torch.Generator())
    assert noisy_blur.std() < x.std()


# ---------------------------------------------------------------------- probe / knn
def test_linear_probe_folds_standardisation():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 5 + 40  # far from 0, unscaled
    y = torch.arange(90) % 3
    f = centres[y] + torch.randn(90, 6, generator=g)
    probe, info = fit_linear_probe(f[:60], y[:60], f[60:], y[60:])
    assert info["probe_val_accuracy"] == 1.0
    assert (probe(f[60:]).argmax(1) == y[60:]).all()


def test_knn_accuracy_brute_force():
    g = torch.Generator().manual_seed(1)
    ft, yt = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    fv, yv = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    k = 5
    correct = 0
    for i in range(10):
        sims = [(float(torch.cosine_similarity(fv[i], ft[j], dim=0)), j) for j in range(30)]
        top = [j for _, j in sorted(sims, reverse=True)[:k]]
        counts = [sum(int(yt[j]) == c for j in top) for c in range(3)]
        correct += int(max(range(3), key=lambda c: (counts[c], -c)) == int(yv[i]))
    assert knn_accuracy(ft, yt, fv, yv, k=k) == pytest.approx(correct / 10)


# ---------------------------------------------------------------------- CLI
def test_cli_train_folder_resume_and_load(tmp_path, capsys):
    data = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            arr = (torch.rand(20, 28, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(data / cls / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", "simclr", "--data", str(data), "--arch", "digits-cnn", "--epochs", "1",
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    assert (out / "model.pt").is_file() and (out / "log.csv").is_file()
    assert cli_main(args) == 2  # exists, no --resume: one-line error
    assert "--resume" in capsys.readouterr().err
    assert cli_main(args + ["--resume"]) == 0
    model = load_trained(out / "model.pt")
    assert model.classifier is not None  # class sub-folders -> linear probe stored
    x = torch.rand(2, 3, 32, 32)
    assert model.embed(x).shape == (2, 64)
    assert model.classifier(model.encoder(x).mean((2, 3))).shape == (2, 2)
    from_ckpt = load_trained(out / "checkpoint.pt", embedding="backbone")
    assert from_ckpt.embed(x).shape == (2, 128)


def test_cli_train_help_and_bad_data(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "simclr", "--help"])
    assert "examples:" in capsys.readouterr().out
    assert cli_main(["train", "simclr", "--data", "/no/such/dir", "--out", "/tmp/x"]) == 1
    assert "no/such/dir" in capsys.readouterr().err


def test_cli_train_flat_folder_reports_view_cosines(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(8):
        arr = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(data / f"{i}.jpg")
    out = tmp_path / "run"
    assert cli_main(["train", "simclr", "--data", str(data), "--arch", "digits-cnn",
                     "--epochs", "1", "--batch-size", "4", "--out", str(out), "--device", "cpu",
                     "--quiet"]) == 0
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    for emb in ("projector", "backbone"):
        same, diff = meta[f"view_cosine_same_{emb}"], meta[f"view_cosine_different_{emb}"]
        assert meta[f"view_cosine_gap_{emb}"] == pytest.approx(same - diff)
    assert load_trained(out / "model.pt").classifier is None
