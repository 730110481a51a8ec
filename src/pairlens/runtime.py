"""Run-time settings that decide speed, not results: batch sizes, the CPU allocator, threads.

* :func:`default_batch_size`: the number of *images per forward pass* every method and metric
  uses when its ``batch_size`` is ``None``, chosen from the device and the image size.
* :func:`tune_cpu_runtime`: on Linux with glibc, keep freed activation buffers in the process
  (``mallopt``) and make idle OpenMP threads sleep instead of spinning. The command line calls it
  at start-up; library users may call it once themselves. See ``docs/performance.md``.
* :func:`usable_cores` and :func:`auto_workers`: how many local worker processes
  ``pairlens evaluate --workers auto`` starts (processes beat threads on small inputs).

Importing this module does not import torch (the CLI calls it before torch is loaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from typing import Any

#: Images per forward pass on a CPU for a 224 x 224 input, without and with autograd: forward +
#: backward of 32 ResNet-50 images peaks near 5 GB, a no-grad pass of 32 needs well under 1 GB and
#: is no slower per image than smaller ones once the allocator is tuned (docs/performance.md).
CPU_IMAGES_224 = {False: 32, True: 8}
#: Images per forward pass on a 24 GiB GPU for a 224 x 224 input, without and with autograd;
#: scaled by the device's memory.
GPU_IMAGES_224 = {False: 128, True: 32}
MAX_BATCH = {"cpu": 64, "cuda": 1024}

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: what tune_cpu_runtime() sets; the environment variables with the same effect
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def default_batch_size(
    device: Any, image_hw: tuple[int, int], grad: bool = False
) -> int:
    """Images per forward pass for images of ``image_hw`` pixels on ``device``.

    CPU: 32 images (no autograd) or 8 (autograd) at 224 x 224, scaled by the inverse pixel count,
    at most 64: the per-image cost does not grow with the batch once the allocator keeps its
    buffers (:func:`tune_cpu_runtime`), and forward + backward memory bounds the autograd batch
    (32 ResNet-50 images peak near 5 GB). CUDA: 128 (no autograd) or 32 (autograd) images at
    224 x 224 on a 24 GiB card, scaled by the card's memory and the inverse pixel count.

    Args:
        device: a ``torch.device`` or its name.
        image_hw: (H, W) of the model input.
        grad: whether the passes keep an autograd graph (gradient and CAM methods).

    Returns:
        An integer >= 1.
    """
    return _default_batch_size(str(device), tuple(image_hw), bool(grad))


@functools.lru_cache(maxsize=64)
def _default_batch_size(device_name: str, image_hw: tuple[int, int], grad: bool) -> int:
    import torch

    device = torch.device(device_name)
    scale = (224 * 224) / max(1, image_hw[0] * image_hw[1])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        n = GPU_IMAGES_224[grad] * scale * props.total_memory / (24 << 30)
        return int(max(1, min(MAX_BATCH["cuda"], n)))
    return int(max(1, min(MAX_BATCH["cpu"], CPU_IMAGES_224[grad] * scale)))


def resolve_batch_size(batch_size: int | None, x: Any, grad: bool = False) -> int:
    """``batch_size`` if given (must be >= 1), else :func:`default_batch_size` for the device and
    image size of the (B, 3, H, W) tensor ``x``. Raises ValueError for a value < 1."""
    if batch_size is None:
        return default_batch_size(x.device, tuple(x.shape[-2:]), grad)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size (images per forward pass) must be >= 1; got {batch_size}")
    return int(batch_size)


def tune_cpu_runtime() -> dict[str, str]:
    """Keep freed memory in the process and let idle OpenMP threads sleep (Linux / glibc).

    * ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 2 GiB)`` (the largest ``int``):
      glibc otherwise returns every large activation buffer to the OS after each forward pass
      (``munmap``) and page-faults it back in on the next (measured: 50 M minor faults per pair
      of the six metrics on ResNet-50). The cost: the process keeps its peak heap (RSS stays at
      its high-water mark).
      Skipped when the user set ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` or preloads
      another allocator (``LD_PRELOAD`` with jemalloc / tcmalloc), or on other C libraries.
    * ``OMP_WAIT_POLICY=PASSIVE`` unless set: spinning OpenMP workers slow a loaded machine down
      (measured 16x for one forward). Only effective before torch is first imported.

    Returns:
        What was applied, e.g. ``{"malloc": "mmap_max=0,trim_threshold=2GiB",
        "OMP_WAIT_POLICY": "PASSIVE"}`` (empty when nothing was changed).
    """
    applied: dict[str, str] = {}
    for key, value in THREAD_ENV.items():
        if key not in os.environ and "torch" not in sys.modules:
            os.environ[key] = value
            applied[key] = value
    if not sys.platform.startswith("linux"):
        return applied
    if any(k in os.environ for k in ALLOCATOR_ENV) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return applied  # musl and others: mallopt semantics differ
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) == 1
    except (OSError, AttributeError):
        return applied
    if ok:
        applied["malloc"] = "mmap_max=0,trim_threshold=2GiB"
    return applied


#: ``--workers auto`` starts several processes only for model inputs of at most this many pixels
#: (H x W): measured in docs/performance.md ("Local worker processes"), two processes of one
#: thread beat one process of two threads on small inputs (the 32 px digits CNN) only; on larger
#: ones PyTorch's intra-op threads already keep the cores busy.
PROCESS_MAX_PIXELS = 64 * 64
#: at most this many workers (each holds the model, its activations and a Python)
MAX_WORKERS = 8
#: share of the available memory the workers may fill together
MEMORY_SHARE = 0.8
#: ``--workers auto`` starts workers only for work estimated at least this long (one process's
#: seconds): each worker's start-up costs about 4 s of wall time here and processes save 10-16 %
#: of the work on small inputs, so shorter runs lose (docs/performance.md)
MIN_WORKER_SECONDS = 40.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux, else ``os.cpu_count()``),
    at least 1."""
    cores = _usable_set()
    return max(1, len(cores) if cores else os.cpu_count() or 1)


def thread_budget(threads: int | None = None) -> int:
    """The CPU threads a command may use: ``threads`` (``--threads``) if given, else
    ``OMP_NUM_THREADS`` when set to a positive integer, else :func:`usable_cores`."""
    if threads:
        return int(threads)
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        value = 0
    return value if value >= 1 else usable_cores()


def idle_cores(interval: float = 0.5) -> float:
    """How many of the usable cores other work leaves idle, measured now: the idle share of
    each usable core over ``interval`` seconds (``/proc/stat``, Linux; the caller should itself
    be idle meanwhile), else usable cores minus the 1-minute load average, else
    :func:`usable_cores`. The load average lags by minutes (a run that just ended still counts),
    hence the sample."""
    cores = _usable_set()
    first = _cpu_times(cores)
    if first is not None:
        time.sleep(interval)
        second = _cpu_times(cores)
        if second is not None:
            idle = sum(second[c][0] - first[c][0] for c in second if c in first)
            total = sum(second[c][1] - first[c][1] for c in second if c in first)
            if total > 0:
                return len(second) * idle / total
    try:
        return usable_cores() - os.getloadavg()[0]
    except (AttributeError, OSError):
        return float(usable_cores())


def _usable_set() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cpu_times(cores: set[int] | None) -> dict[int, tuple[int, int]] | None:
    """(idle + iowait, total) clock ticks of each CPU in ``cores`` (all if None) from
    /proc/stat, None where unavailable."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            cpu, ticks = int(name[3:]), [int(v) for v in fields[:8]]
        except ValueError:
            continue
        if cores is None or cpu in cores:
            out[cpu] = (ticks[3] + ticks[4], sum(ticks))
    return out or None


def _proc_bytes(path: str, field: str) -> int | None:
    """The ``FIELD:  N kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in
    bytes, None where the file or the field is missing (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable`` of /proc/meminfo), None
    where unknown."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def peak_memory() -> int:
    """Peak resident memory of this process so far, in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``. ``ru_maxrss`` is not used there: a process started
    with ``subprocess`` (vfork + exec) inherits its parent's peak in ``ru_maxrss``, so a command
    run from a large process (a test session, a notebook) would report the parent's memory.
    Elsewhere ``ru_maxrss`` (KiB on Linux and BSD, bytes on macOS)."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def auto_workers(
    device_type: str,
    image_hw: tuple[int, int],
    pending_units: int,
    threads: int | None = None,
    distributed: bool = False,
    idle: float | None = None,
    worker_bytes: int | None = None,
    available: int | None = None,
    seconds: float | None = None,
) -> int:
    """The number of local worker processes ``pairlens evaluate --workers auto`` uses.

    1 on CUDA / MPS (one device), under ``torchrun`` (``distributed``), with ``threads == 1``,
    with fewer than 2 pending units of work, or for inputs larger than
    :data:`PROCESS_MAX_PIXELS` (there one process's threads use the cores as well as processes
    would, at a fraction of the memory). Otherwise one worker per core of the CPU budget
    (``threads``, default :func:`usable_cores`), at most :data:`MAX_WORKERS`, at most
    ``pending_units``, at most the cores other work leaves idle (``idle``, rounded; on a busy
    machine processes gain nothing and pay their start-up, measured in docs/performance.md), and
    at most as many as fit in :data:`MEMORY_SHARE` of ``available`` memory at ``worker_bytes``
    each; 1 when the work left is estimated under :data:`MIN_WORKER_SECONDS` (``seconds``).

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ``"mps"``, ...
        image_hw: (H, W) of the model input.
        pending_units: units of work (a method variant on ``--pairs-per-unit`` pairs) left to do.
        threads: the CPU threads the run may use (``--threads``), None for every usable core.
        distributed: whether the process runs under ``torchrun``.
        idle: cores left idle by other work (:func:`idle_cores`), None to ignore the load.
        worker_bytes: the expected peak memory of one worker (the parent's peak after the
            estimate step, :func:`peak_memory`), None to ignore memory.
        available: available memory in bytes (:func:`available_memory`), None to ignore memory.
        seconds: the estimated seconds of the work left in one process (0 when nothing was
            estimated: at most one unit per method), None to ignore it.

    Returns:
        An integer >= 1.
    """
    budget = usable_cores() if threads is None else int(threads)
    if (device_type != "cpu" or distributed or budget <= 1 or pending_units < 2
            or image_hw[0] * image_hw[1] > PROCESS_MAX_PIXELS
            or (seconds is not None and seconds < MIN_WORKER_SECONDS)):
        return 1
    n = min(budget, MAX_WORKERS, pending_units)
    if idle is not None:
        n = min(n, int(idle + 0.5))
    if worker_bytes and available:
        n = min(n, int(available * MEMORY_SHARE // worker_bytes))
    return max(1, n)


def release_free_memory() -> None:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``; nothing elsewhere):
    the parent of ``evaluate --workers`` calls it before its workers start, since
    :func:`tune_cpu_runtime` otherwise keeps its peak heap for the whole run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
