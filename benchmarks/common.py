"""Helpers shared by the benchmarks: models with random weights, timing, memory, machine line."""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

import pairlens


def resnet50_model() -> pairlens.SimilarityModel:
    """torchvision ResNet-50 (random weights, fc removed) at 224 px, feature layer ``layer4``."""
    import torchvision

    torch.manual_seed(0)
    enc = torchvision.models.resnet50()
    enc.fc = torch.nn.Identity()
    return pairlens.SimilarityModel(enc, feature_layer="layer4", input_size=(224, 224),
                                    name="resnet50")


def vit_b16_model() -> pairlens.SimilarityModel:
    """torchvision ViT-B/16 (random weights, head removed) at 224 px; CAM layer: the first norm
    of the last block (see ``SimilarityModel``)."""
    import torchvision

    torch.manual_seed(0)
    enc = torchvision.models.vit_b_16()
    enc.heads = torch.nn.Identity()
    return pairlens.SimilarityModel(enc, feature_layer="encoder.layers.encoder_layer_11.ln_1",
                                    input_size=(224, 224), patch_size=16, name="vit-b16")


def load_benchmark_model(name: str) -> pairlens.SimilarityModel:
    """``resnet50``, ``vit-b16`` (random weights) or a registered model name (``digits``...);
    an unknown name ends the script with one line."""
    if name == "resnet50":
        return resnet50_model()
    if name == "vit-b16":
        return vit_b16_model()
    try:
        return pairlens.load_model(name, device="cpu")
    except (KeyError, ValueError) as err:
        raise SystemExit(f"{Path(sys.argv[0]).name}: model {name!r}: {err}") from None


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (one usage line otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def pair(model: pairlens.SimilarityModel, b: int = 1, seed: int = 0):
    """``b`` reproducible pairs (two (b, 3, H, W) batches in model-input space)."""
    h, w = model.input_size
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(b, 3, h, w, generator=g)
    x2 = (x1 + 0.3 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)
    return model.normalize(x1).to(model.device), model.normalize(x2).to(model.device)


_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def add_clock_option(ap) -> None:
    """``--clock wall|cpu`` on an ``argparse`` parser; pass its value to :func:`set_clock`."""
    ap.add_argument("--clock", choices=tuple(_CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (for one-thread runs on a loaded "
                    "machine)")


def set_clock(name: str) -> None:
    """``wall`` (default) or ``cpu``: this process's CPU time (all its threads). On a loaded
    machine the CPU time of a one-thread run measures the work done, where wall time also counts
    the time other processes held the cores."""
    global _clock
    _clock = _CLOCKS[name]


def now() -> float:
    """The benchmark clock (see :func:`set_clock`)."""
    return _clock()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, min_total: float = 1.0, device: torch.device | None = None) -> float:
    """Best of at least ``repeats`` timed calls, repeated until ``min_total`` seconds have been
    spent (millisecond timings are not one shot, and one call delayed by other processes on a
    loaded machine does not decide the result). The first call is a warm-up, except when it takes
    over ``2 * min_total`` seconds: then it is measured as the first run.
    ``device``: synchronised before each clock reading when it is a CUDA device."""
    device = device or torch.device("cpu")
    sync(device)
    start = now()
    fn()
    sync(device)
    first = now() - start
    best, spent, runs = (first, first, 1) if first > 2 * min_total else (math.inf, 0.0, 0)
    while runs < repeats or spent < min_total:
        start = now()
        fn()
        sync(device)
        elapsed = now() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def timed_together(fns, repeats: int, min_total: float = 1.0,
                   device: torch.device | None = None, rounds: int = 5) -> list[float]:
    """Best time of one call of each function of ``fns``, measured in interleaved blocks so that
    a change of machine load during the run affects every function alike (the ratios of the
    results are the point): each of ``rounds`` rounds calls every function in turn for a block
    of about ``min_total / rounds`` seconds (at least once, and at least ``repeats`` calls over
    the whole run). Calls within a block follow each other, so caches and the allocator are as
    warm as in a user's loop. A first (warm-up) call longer than ``2 * min_total`` seconds counts
    as a run, as in :func:`timed`."""
    device = device or torch.device("cpu")
    n = len(fns)
    best, spent, runs = [math.inf] * n, [0.0] * n, [0] * n

    def run(i: int) -> float:
        sync(device)
        start = now()
        fns[i]()
        sync(device)
        elapsed = now() - start
        best[i], spent[i], runs[i] = min(best[i], elapsed), spent[i] + elapsed, runs[i] + 1
        return elapsed

    for i in range(n):  # warm-up: measured, counted only when long
        if run(i) <= 2 * min_total:
            best[i], spent[i], runs[i] = math.inf, 0.0, 0
    block = min_total / rounds
    for r in range(rounds):
        for i in range(n):
            if runs[i] >= repeats and spent[i] >= min_total:
                continue
            target = spent[i] + block
            while True:
                run(i)
                if spent[i] >= target and runs[i] >= math.ceil(repeats * (r + 1) / rounds):
                    break
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (:func:`pairlens.runtime.peak_memory`:
    ``VmHWM`` on Linux, not the ``ru_maxrss`` a subprocess inherits from its parent)."""
    from pairlens.runtime import peak_memory

    return peak_memory() / 2**20


def machine_line() -> str:
    """One line: CPU, cores, torch version and threads, 1-minute load, allocator settings."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = ",".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "MALLOC_MMAP_MAX_",
                                                    "MALLOC_TRIM_THRESHOLD_") if k in os.environ)
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, load {load:.2f}"
            + (f", {env}" if env else ""))
