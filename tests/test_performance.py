"""Performance plumbing (not timings): the batch-size knob, the runtime settings, start-up imports,
and the benchmark scripts run at a tiny size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import pair_batch, square_model

import pairlens
from pairlens.methods.registry import method_infos
from pairlens.runtime import default_batch_size, resolve_batch_size

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
FAST = {"smoothgrad": {"n_samples": 4}, "pairwise-occlusion": {"n_samples": 10},
        "averaged-transforms": {"steps": 3}, "conditional-occlusion": {"window": 16, "stride": 8}}
BATCHED = [i.name for i in method_infos() if "batch_size" in i.params]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**_env(), **env}, check=True, timeout=300)


class ForwardSizes:
    """Records the batch dimension of every forward pass through a model's encoder."""

    def __init__(self, model: pairlens.SimilarityModel):
        self.sizes: list[int] = []
        self.handle = model.encoder.register_forward_pre_hook(
            lambda _m, args: self.sizes.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_every_method_except_the_random_baseline_has_the_batch_size_knob():
    assert set(BATCHED) == {i.name for i in method_infos()} - {"random"}


CASES = [("square", name) for name in BATCHED] + [
    ("vit", name) if name in ("grad-cam", "input-x-gradient", "averaged-transforms")
    else pytest.param("vit", name, marks=pytest.mark.slow) for name in BATCHED
    if name != "bilrp"]  # LRP has no rules for transformers: refused (test_correspondence.py)


@pytest.mark.parametrize("model_name,name", CASES)
def test_batch_size_bounds_images_per_forward_and_never_changes_the_maps(name, model_name,
                                                                         tiny_vit):
    model = square_model() if model_name == "square" else tiny_vit
    x1, x2 = pair_batch(3)
    params = FAST.get(name, {})
    results = {}
    for bs in (1, 3, 1000):
        with ForwardSizes(model) as rec:
            exp = pairlens.explain(model, x1, x2, method=name, batch_size=bs, **params)
        # a pair method needs both images of a pair in one pass: at least 2 images
        assert max(rec.sizes) <= max(bs, 2), (bs, rec.sizes)
        results[bs] = exp
    for bs in (1, 3):
        for a, b in zip(results[bs].maps, results[1000].maps, strict=True):
            # equal up to float reassociation (convolutions pick algorithms by batch size)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
        torch.testing.assert_close(results[bs].score, results[1000].score)
    # the largest batch really is used when allowed (one pass of all images where possible)
    assert max(rec.sizes) > 3


def test_metrics_batch_size_bounds_images_per_forward_and_never_changes_values():
    model = square_model()
    x1, x2 = pair_batch(2)
    g = torch.Generator().manual_seed(0)
    maps = (torch.rand(2, 32, 32, generator=g), torch.rand(2, 32, 32, generator=g))
    out = {}
    for bs in (7, 64, 5000):
        with ForwardSizes(model) as rec:
            out[bs] = pairlens.evaluate(model, x1, x2, maps, step=16, batch_size=bs,
                                        return_curves=True)
        assert max(rec.sizes) <= bs
    for k in out[5000]:
        torch.testing.assert_close(out[7][k], out[5000][k], equal_nan=True)
        torch.testing.assert_close(out[64][k], out[5000][k], equal_nan=True)


def test_batch_size_lowers_peak_memory(tmp_path):
    """Peak RSS of a fresh process: 32 occluded 256-px images of a wide one-layer CNN in one pass
    (16 MiB of activations each) against 2 at a time; same maps either way."""
    code = """
import sys, torch, pairlens
torch.manual_seed(0)
enc = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU())
model = pairlens.SimilarityModel(enc, input_size=(256, 256), mean=(0, 0, 0), std=(1, 1, 1))
g = torch.Generator().manual_seed(0)
x1, x2 = torch.rand(2, 1, 3, 256, 256, generator=g)
exp = pairlens.explain(model, x1.expand(8, -1, -1, -1), x2.expand(8, -1, -1, -1),
                       method="conditional-occlusion", window=128, stride=128,
                       batch_size=int(sys.argv[1]))
torch.save(exp.maps, sys.argv[2])
sys.path.insert(0, sys.argv[3])
from common import peak_rss_mb  # VmHWM: ru_maxrss would include the test session's own peak
print(peak_rss_mb())
"""
    rss = {}
    for bs in (2, 40):
        proc = subprocess.run([sys.executable, "-c", code, str(bs), str(tmp_path / f"{bs}.pt"),
                               str(BENCH)],
                              capture_output=True, text=True, env=_env(), check=True, timeout=300)
        rss[bs] = float(proc.stdout.split()[-1])
    assert rss[40] - rss[2] > 250, rss  # MiB
    small, large = (torch.load(tmp_path / f"{bs}.pt", weights_only=True) for bs in (2, 40))
    for a, b in zip(small, large, strict=True):
        torch.testing.assert_close(a, b)


def test_default_batch_size_follows_device_and_image_size(monkeypatch):
    assert default_batch_size("cpu", (224, 224)) == 32
    assert default_batch_size("cpu", (224, 224), grad=True) == 8
    assert default_batch_size("cpu", (448, 448), grad=True) == 2
    assert default_batch_size("cpu", (1024, 1024), grad=True) == 1
    assert default_batch_size("cpu", (32, 32)) == 64  # capped

    class Props:
        total_memory = 24 << 30

    from pairlens.runtime import _default_batch_size

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: Props)
    _default_batch_size.cache_clear()
    assert default_batch_size("cuda", (224, 224)) == 128
    assert default_batch_size("cuda", (224, 224), grad=True) == 32
    Props.total_memory = 8 << 30
    _default_batch_size.cache_clear()
    assert default_batch_size("cuda", (224, 224), grad=True) == 10
    _default_batch_size.cache_clear()
    x = torch.zeros(1, 3, 224, 224)
    assert resolve_batch_size(None, x) == 32 and resolve_batch_size(5, x) == 5
    with pytest.raises(ValueError, match="images per forward pass"):
        resolve_batch_size(0, x)


def _reference_rectangles(u, h, w, area, ratio):
    """The convention written out one rectangle at a time (torchvision RandomErasing's loop)."""
    masks = torch.zeros(len(u), h, w, dtype=torch.bool)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for k, uk in enumerate(u.tolist()):
        r = math.exp(lo + (hi - lo) * uk[10])
        for t in range(10):
            a = (area[0] + (area[1] - area[0]) * uk[t]) * h * w
            rh, rw = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if rh <= h and rw <= w:
                break
        rh, rw = max(1, min(rh, h)), max(1, min(rw, w))
        top, left = int(uk[11] * (h - rh + 1)), int(uk[12] * (w - rw + 1))
        masks[k, top : top + rh, left : left + rw] = True
    return masks


@pytest.mark.parametrize("hw,area", [((224, 224), (0.1, 0.3)), ((7, 40), (0.5, 0.9))])
def test_vectorised_random_rectangles_equal_the_loop(hw, area):
    from pairlens.methods.perturbation import random_rectangles

    u = torch.rand(300, 13, generator=torch.Generator().manual_seed(3))
    masks = random_rectangles(300, *hw, area, (1.0, 1.5), torch.Generator().manual_seed(3))
    # (7, 40) with 50-90 % of the area at aspect >= 1 never fits: the clipped last try is used
    torch.testing.assert_close(masks, _reference_rectangles(u, *hw, area, (1.0, 1.5)))


def test_set_execution_keeps_float32_outputs_and_records_amp():
    model = square_model()
    x1, x2 = pair_batch(1)
    plain = pairlens.explain(model, x1, x2, method="grad-cam")
    model.set_execution(amp="bf16", channels_last=True)
    try:
        fast = pairlens.explain(model, x1, x2, method="grad-cam")
        assert model.embed(x1).dtype == torch.float32
        assert fast.maps[0].dtype == torch.float32 and fast.model["amp"] == "bf16"
        corr = torch.corrcoef(torch.stack([plain.maps[0].flatten(), fast.maps[0].flatten()]))
        assert corr[0, 1] > 0.95
    finally:
        model.set_execution()
    with pytest.raises(ValueError, match="amp"):
        model.set_execution(amp="int8")


def test_help_imports_no_torch():
    code = ("import sys\nfrom pairlens.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0]"
            " in ('torch', 'torchvision', 'matplotlib', 'captum', 'gradio')))")
    assert _python(code).stdout.strip().splitlines()[-1] == "[]"


def test_tune_cpu_runtime_sets_allocator_and_wait_policy_and_respects_the_user():
    code = ("import json, os\nfrom pairlens.runtime import tune_cpu_runtime\n"
            "print(json.dumps([tune_cpu_runtime(), os.environ.get('OMP_WAIT_POLICY')]))")
    env = {k: v for k, v in _env().items() if not k.startswith("MALLOC_")
           and k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    applied, policy = json.loads(proc.stdout)
    assert policy == "PASSIVE" and applied["OMP_WAIT_POLICY"] == "PASSIVE"
    if sys.platform.startswith("linux"):
        assert applied["malloc"].startswith("mmap_max=0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "MALLOC_MMAP_MAX_": "5", "OMP_WAIT_POLICY": "ACTIVE"},
                          check=True)
    applied, policy = json.loads(proc.stdout)
    assert applied == {} and policy == "ACTIVE"


# ------------------------------------------------------------------ benchmark scripts, tiny size


def _bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, env=_env(), check=True, timeout=600)
    return proc.stdout


def test_methods_benchmark_checks_metrics_against_the_reference_loops():
    out = _bench("methods.py", "--models", "digits", "--methods", "grad-cam,metrics",
                 "--repeats", "1", "--threads", "1", "--step", "64")
    rows = [line for line in out.splitlines() if line.startswith("| digits")]
    assert [r.split("|")[2].strip() for r in rows] == ["grad-cam", "six metrics"]
    for row in rows:  # PairLens, floor, reference, two ratios: all positive numbers
        assert all(float(v) > 0 for v in row.strip("|").split("|")[2:])
    assert "peak RSS" in out
    out = _bench("methods.py", "--models", "digits", "--methods", "deep-similarity",
                 "--repeats", "1", "--threads", "1", "--pairs-per-call", "3")
    assert "3 pair(s) per call" in out and "| digits | deep-similarity |" in out
    proc = subprocess.run([sys.executable, str(BENCH / "methods.py"), "--methods", "smoothgrad",
                           "--pairs-per-call", "2"], capture_output=True, text=True, env=_env())
    assert proc.returncode != 0 and "--pairs-per-call > 1 needs" in proc.stderr


def test_overhead_benchmark_counts_operations_of_pairlens_and_the_floor():
    out = _bench("overhead.py", "--methods", "grad-cam,deep-similarity", "--repeats", "1")
    rows = [line.strip("|").split("|") for line in out.splitlines()
            if line.startswith(("| grad-cam", "| deep-similarity"))]
    assert [r[0].strip() for r in rows] == ["grad-cam", "deep-similarity"]
    for r in rows:  # times and ratio positive; PairLens runs at least the floor's operations
        assert all(float(v) > 0 for v in (r[1], r[2], r[3]))
        assert int(r[5]) >= int(r[6]) > 10


def test_reference_metrics_loops_agree_with_pairlens(square):
    sys.path.insert(0, str(BENCH))
    import reference_impl as ref

    x1, x2 = pair_batch(1)
    g = torch.Generator().manual_seed(2)
    maps = (torch.rand(1, 32, 32, generator=g), torch.rand(1, 32, 32, generator=g))
    ours = pairlens.evaluate(square, x1, x2, maps, step=24)
    theirs = ref.six_metrics(square, x1, x2, *maps, step=24)
    for k, v in theirs.items():
        assert math.isclose(float(ours[k][0]), v, abs_tol=1e-5), k


@pytest.mark.parametrize("name", ["input-x-gradient", "grad-cam", "interaction-cam"])
def test_reference_method_loops_give_pairlens_maps(square, name):
    """The batch-1 reference loops compute the same maps (CAMs before upsampling)."""
    import torch.nn.functional as F

    sys.path.insert(0, str(BENCH))
    import reference_impl as ref

    x1, x2 = pair_batch(1)
    ours = pairlens.explain(square, x1, x2, method=name).maps
    theirs = ref.METHODS[name](square, x1, x2)
    for a, b in zip(ours, theirs, strict=True):
        b = F.interpolate(b[None], size=(32, 32), mode="bilinear")[0] if b.shape[-1] != 32 else b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_device_check_without_cuda_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = _bench("device_check.py")
    assert len(out.strip().splitlines()) == 1 and "no CUDA" in out


@pytest.mark.parametrize("model_name", ["square", pytest.param("vit", marks=pytest.mark.slow)])
def test_device_check_runs_every_method_and_the_metrics(model_name, tiny_vit, monkeypatch):
    """Everything but the device: CPU against CPU, a CNN and a ViT, batches 1 and 2."""
    sys.path.insert(0, str(BENCH))
    import device_check

    monkeypatch.setattr(device_check, "run_timed", lambda fn, device: (1.0, fn()))  # one run
    factory = square_model if model_name == "square" else (lambda: tiny_vit)
    lines: list[str] = []
    failures = device_check.check({model_name: factory}, device="cpu", batches=(1, 2),
                                  out=lines.append)
    assert failures == 0, "\n".join(lines)
    rows = [line for line in lines if line.startswith(f"| {model_name} |")]
    assert len(rows) == len(device_check.method_names()) + 1
    # every method that applies to the model agrees; one that does not (BiLRP on a ViT) gets a
    # row saying so instead of stopping the check
    refused = {"bilrp"} if model_name == "vit" else set()
    for row in rows:
        name = row.split("|")[2].strip()
        expected = "| n/a |" if name in refused else "| yes |"
        assert row.rstrip().endswith(expected), row


def test_device_check_flags_a_disagreement(monkeypatch):
    """The model under test (on the "device") gets other weights than the reference."""
    sys.path.insert(0, str(BENCH))
    import copy

    import device_check

    def perturbed_copy(model, device, execution):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p))
        return other

    monkeypatch.setattr(device_check, "device_copy", perturbed_copy)
    lines: list[str] = []
    failures = device_check.check({"square": square_model}, device="cpu", batches=(1,),
                                  methods=["grad-cam"], out=lines.append)
    # the metrics differ (the square model's Grad-CAM map may survive the perturbation)
    assert failures >= 1
    assert any("| six metrics |" in line and line.rstrip().endswith("| NO |") for line in lines)


@pytest.mark.slow
def test_precision_benchmark_runs_a_variant():
    out = _bench("precision.py", "--models", "digits", "--variants", "channels-last",
                 "--methods", "grad-cam", "--threads", "1")
    assert "| digits | grad-cam |" in out and "precision: 0 check(s) failed" in out


@pytest.mark.slow
def test_batch_sizes_benchmark_compares_the_runtime_settings():
    out = _bench("batch_sizes.py", "--model", "digits", "--batches", "1,64", "--repeats", "1",
                 "--threads", "1")
    assert "| 64* |" in out and "peak RSS" in out


@pytest.mark.slow
def test_study_benchmark_reports_the_stages():
    out = _bench("study.py", "--pairs", "1", "--threads", "1")
    assert "README study, 1 pairs" in out
    stages = out.split("stages:")[1]
    for stage in ("data", "explain", "metrics", "store", "other"):
        assert stage in stages



def _occlusion_bound():
    sys.path.insert(0, str(BENCH))
    import occlusion_bound

    return occlusion_bound


def test_occlusion_bound_counts_exactly_the_macs_that_depend_on_the_occluder():
    """A 1x1 convolution, global pooling and a linear layer: the convolution outputs that depend
    on a 4x4 occluder are its 16 pixels (one pixel: 1), the linear layer depends on all; a 3x3
    convolution spreads one pixel to 9 outputs, a second one to 25."""
    from torch import nn

    bound = _occlusion_bound()
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 2))
    model = pairlens.SimilarityModel(pointwise, feature_layer="0", input_size=(8, 8))
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 0, 0] = True
    share = bound.recompute_share(model, torch.rand(1, 3, 8, 8), masks, batch=1)
    conv, linear = 3 * 4, 4 * 2  # MACs per conv output position, per linear output row
    expected = [(16 * conv + linear) / (64 * conv + linear), (conv + linear) / (64 * conv + linear)]
    torch.testing.assert_close(share, torch.tensor(expected, dtype=torch.float64))

    spatial = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = pairlens.SimilarityModel(spatial, feature_layer="1", input_size=(10, 10))
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 4, 4] = True
    share = bound.recompute_share(model, torch.rand(1, 3, 10, 10), mask)
    c1, c2 = 3 * 9 * 4, 4 * 9 * 4
    assert float(share) == pytest.approx((9 * c1 + 25 * c2) / (100 * (c1 + c2)))



def test_batch_invariance_benchmark_separates_map_rounding_from_metric_passes():
    out = _bench("batch_invariance.py", "--pairs", "2", "--methods", "grad-cam")
    row = next(line for line in out.splitlines() if line.startswith("| digits | grad-cam |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) < 1e-5  # the maps agree to float rounding
    assert float(cells[5]) < 1e-5  # the metric passes alone: rounding only
    assert all(k in cells[6] for k in ("SI", "SD", "CI", "CD", "SAD", "CAD"))

def test_occlusion_bound_benchmark_runs_on_digits():
    out = _bench("occlusion_bound.py", "--models", "digits", "--threads", "1")
    rows = [line for line in out.splitlines() if line.startswith("| digits |")]
    assert len(rows) == 2  # conditional and pairwise occlusion
    for row in rows:
        mean, low, high = (float(v) for v in row.strip("|").split("|")[2:])
        assert 0 < low <= mean <= high <= 1


# ---------------------------------------------------------------- with issue 10's towers / layouts
def _toy(layout: str = "first", two: bool = False) -> pairlens.SimilarityModel:
    from regions import REGION1, REGION2, SIZE, ToyEncoder

    kw = {}
    if two:
        kw = dict(encoder2=ToyEncoder("tokens-2", REGION2, seed=1), feature_layer2="features",
                  mean2=(0.2, 0.3, 0.4), std2=(0.5, 0.5, 0.5))
    return pairlens.SimilarityModel(ToyEncoder(layout, REGION1), feature_layer="features",
                                    input_size=SIZE, **kw)


def _full_graph_feature_gradients(model, x1, x2):
    """dS/dA of both feature layers with the whole network recorded (the plain autograd way)."""
    hw = tuple(x1.shape[-2:])
    with torch.enable_grad():
        z1, a1 = model.embed_with_features(x1.clone().requires_grad_(True), 1)
        z2, a2 = model.embed_with_features(x2.clone().requires_grad_(True), 2)
        s = model.embedding_similarity(z1, z2)
        g1, g2 = torch.autograd.grad(s.sum(), (a1, a2), materialize_grads=True)
    return s, model.to_grid(g1, hw, 1), model.to_grid(g2, hw, 2)


@pytest.mark.parametrize("case", ["first", "last", "tokens-1", "tokens-5", "gap", "two-towers",
                                  "target", "neg-l2"])
def test_cam_gradients_skip_the_backbone_and_equal_the_full_graph(case):
    """similarity_feature_gradients records autograd from the feature layer up only, in every
    layout, for two towers and against a fixed target, and gets the full graph's gradients."""
    from regions import pair

    from pairlens.models.similarity import similarity_feature_gradients

    model = _toy("first" if case in ("two-towers", "target", "neg-l2") else case,
                 two=case == "two-towers")
    if case == "neg-l2":
        model = pairlens.SimilarityModel(model.encoder, feature_layer="features",
                                         input_size=model.input_size, similarity="neg-l2")
    x1, x2 = pair()
    if case == "target":
        with torch.no_grad():
            model = model.with_target(model.embed(x2[:1])[0] + 0.1)
        x1 = torch.zeros_like(x1)
    below = []
    encoders = [model.encoder] + ([model.encoder2] if model.encoder2 is not None else [])
    handles = [m.register_forward_hook(lambda _m, _i, out: below.append(out.requires_grad))
               for e in encoders for name, m in e.named_modules() if name == "proj"]
    s, _, _, g1, g2 = similarity_feature_gradients(model, x1, x2)
    for h in handles:
        h.remove()
    assert below and not any(below)  # the patch embedding ran without autograd
    s_ref, r1, r2 = _full_graph_feature_gradients(model, x1, x2)
    torch.testing.assert_close(s, s_ref.detach())
    torch.testing.assert_close(g1, r1.float())
    torch.testing.assert_close(g2, r2.float())
    assert float(g2.abs().amax()) > 0


def test_a_feature_layer_outside_the_embedding_is_refused_not_blank():
    """With the backbone run without autograd, a feature layer whose output never reaches the
    embedding leaves nothing to differentiate: a BlankGradientError, not a crash or blank map."""
    from pairlens.models.similarity import BlankGradientError

    class Branch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.side = torch.nn.Conv2d(4, 4, 1)  # runs, but is not used by the embedding

        def forward(self, x):
            a = self.body(x)
            self.side(a)
            return a

    model = pairlens.SimilarityModel(Branch(), feature_layer="side", input_size=(16, 16))
    x1, x2 = pair_batch(1, size=16)
    with pytest.raises(BlankGradientError, match="side"):
        pairlens.explain(model, x1, x2, method="grad-cam")


@pytest.mark.parametrize("kind", ["two-towers", "target"])
def test_batch_size_knob_with_two_towers_and_fixed_targets(kind):
    """Every batched method keeps its maps and score at batch 1 and at one pass, and never sends
    more than ``batch_size`` images (at least one pair) through either tower."""
    from regions import pair

    model = _toy(two=kind == "two-towers")
    x1, x2 = pair()
    z = None
    if kind == "target":
        with torch.no_grad():
            z = model.embed(x2[:1])[0] + 0.1
    with torch.no_grad():  # the score of the unaltered pair, image 2 through tower 2
        want = (model.similarity(x1, x2) if z is None
                else model.embedding_similarity(model.embed(x1), z.expand(len(x1), -1)))
    fast = {"conditional-occlusion": {"window": 16, "stride": 16}, "smoothgrad": {"n_samples": 3},
            "averaged-transforms": {"steps": 3, "transform": "gaussian-blur"},
            "pairwise-occlusion": {"n_samples": 6}}
    encoders = [model.encoder] + ([model.encoder2] if model.encoder2 is not None else [])
    for name in BATCHED:
        info = next(i for i in method_infos() if i.name == name)
        if kind == "target" and info.pairs_only:
            continue
        out = {}
        for bs in (1, 1000):
            sizes: list[int] = []
            handles = [e.register_forward_pre_hook(lambda _m, a, rec=sizes: rec.append(len(a[0])))
                       for e in encoders]
            try:
                if z is None:
                    out[bs] = pairlens.explain(model, x1, x2, method=name, batch_size=bs,
                                               **fast.get(name, {}))
                else:
                    out[bs] = pairlens.explain(model, x1, target=z, method=name, batch_size=bs,
                                               **fast.get(name, {}))
            finally:
                for h in handles:
                    h.remove()
            assert max(sizes) <= max(bs, 2), (name, bs, sizes)
        for a, b in zip(out[1].maps, out[1000].maps, strict=True):
            if b is None:  # against a target there is one map
                assert a is None
                continue
            # equal up to float reassociation (occlusion maps are differences of similarities)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 + 1e-5 * float(b.abs().max()),
                                       msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(out[1].score, out[1000].score)
        torch.testing.assert_close(out[1000].score, want, msg=lambda m, name=name: f"{name}: {m}")


def test_set_execution_reaches_both_towers_and_fixed_target_views():
    from regions import pair

    model = _toy(two=True).set_execution(amp="bf16")
    seen: list[bool] = []
    model.encoder2.register_forward_hook(
        lambda _m, _i, _o: seen.append(torch.is_autocast_enabled("cpu")))
    x1, x2 = pair()
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    assert seen and all(seen) and exp.model["amp"] == "bf16"
    assert exp.score.dtype == torch.float32 and exp.maps[1].dtype == torch.float32
    with torch.no_grad():
        view = model.with_target(model.embed(x2[:1], 2)[0])
    assert view.amp == "bf16"
