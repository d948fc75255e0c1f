"""Where runs train: the devices this machine has, the ones a session selects
(`--device auto|cpu|mps|N|N,M,...`), and each worker's share of them.

Everything here is plain logic over plain values (the CUDA device names, whether
mps is there, the core count), so tests feed it any machine; `probe()` is the one
call that asks torch. `slot()` and `worker_slot()` are the things with an effect: on
a CPU-only machine, runs beyond the training slots wait for one; each worker holds
its place among the session's workers for its life."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.errors import DeviceError

AUTO, CPU, MPS = "auto", "cpu", "mps"
# ultralytics' own cap on dataloader workers per run.
MAX_DATALOADER_WORKERS = 8


@dataclass(frozen=True)
class Found:
    """What this machine offers: CUDA device names by index, Apple's mps, the platform."""

    cuda: tuple[str, ...] = ()
    mps: bool = False
    platform: str = sys.platform


@dataclass(frozen=True)
class Placement:
    """One worker's device and CPU budget, as plain values (it travels with a TrainRequest)."""

    device: str  # what torch and ultralytics take: "cuda:1", "mps", "cpu"
    label: str  # what a run records: "cuda:1 NVIDIA H200", "cpu"
    threads: int  # torch intra-op threads
    dataloader_workers: int
    slots: int = 0  # runs that may train at once on this machine; 0: no limit

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


def probe() -> Found:
    """The devices torch sees in this process (CUDA_VISIBLE_DEVICES applies)."""
    import torch

    cuda = (
        tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else ()
    )
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Found(cuda=cuda, mps=mps)


def cpu_count() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def parse(text: str) -> str:
    """The syntax of --device (argparse's type=): auto, cpu, mps, or GPU indices N[,M...].
    Whether the machine has them is checked later, by `select`. The ValueError's text
    follows the option and its value."""
    value = text.strip().lower()
    if value in (AUTO, CPU, MPS):
        return value
    parts = [p.strip() for p in value.removeprefix("cuda:").split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError("expected auto, cpu, mps or GPU indices such as 0 or 0,1")
    if len(set(map(int, parts))) != len(parts):
        raise ValueError("a GPU is given twice")
    return ",".join(str(int(p)) for p in parts)


def select(requested: str, found: Found) -> tuple[str, ...]:
    """The labels of the devices runs train on (`cuda:0 NVIDIA H200`, `mps`, `cpu`);
    raises DeviceError, one line, where the machine has no such device."""
    if requested == AUTO:
        if found.cuda:
            return tuple(f"cuda:{i} {name}" for i, name in enumerate(found.cuda))
        return (MPS,) if found.mps else (CPU,)
    if requested == CPU:
        return (CPU,)
    if requested == MPS:
        if found.platform != "darwin":
            raise DeviceError(
                f"--device mps: Apple's Metal (mps) exists only on macOS; this is {found.platform} "
                f"({_found_text(found)})"
            )
        if not found.mps:
            raise DeviceError(
                "--device mps: torch reports mps unavailable on this Mac (macOS 12.3+ and an "
                "Apple-silicon or AMD GPU are needed); use --device cpu"
            )
        return (MPS,)
    indices = [int(i) for i in requested.split(",")]
    if not found.cuda:
        raise DeviceError(
            f"--device {requested}: CUDA is not available here ({_found_text(found)}); use --device cpu or auto"
        )
    missing = [i for i in indices if i >= len(found.cuda)]
    if missing:
        raise DeviceError(
            f"--device {requested}: no GPU {', '.join(map(str, missing))}: torch sees "
            f"{len(found.cuda)} CUDA device{'s' if len(found.cuda) != 1 else ''} ("
            + ", ".join(f"{i}: {name}" for i, name in enumerate(found.cuda))
            + ")"
        )
    return tuple(f"cuda:{i} {found.cuda[i]}" for i in indices)


def _found_text(found: Found) -> str:
    cuda = f"{len(found.cuda)} CUDA GPU{'s' if len(found.cuda) != 1 else ''}" if found.cuda else "no CUDA"
    return f"{cuda}, {'mps' if found.mps else 'no mps'}"


def place(worker: int, workers: int, devices: Sequence[str], cpus: int) -> Placement:
    """Worker `worker` of `workers` (xdist's gw<k>; 0 of 1 without xdist) on the
    selected `devices` (labels from `select`) of a machine with `cpus` cores.

    Worker k trains on device k mod G, so several runs share a GPU (a small model
    leaves a big GPU mostly idle: packing runs is the speed lever). Each worker gets
    an equal share of the cores. On a GPU most of that share feeds the dataloader
    (augmentation is the CPU's work there); on the CPU it all goes to torch's
    threads, with no dataloader worker to compete with them, and at most
    cores/threads runs train at once: a fifth one-thread run on four cores only
    slows the four others down."""
    if workers < 1 or not 0 <= worker < workers or not devices:
        raise ValueError(f"worker {worker} of {workers} on {list(devices)}")
    label = devices[worker % len(devices)]
    device = label.split()[0]
    share = max(1, cpus // workers)
    if device == CPU:
        threads = share
        return Placement(device, label, threads, 0, slots=max(1, cpus // threads))
    loaders = min(MAX_DATALOADER_WORKERS, share - 1)
    return Placement(device, label, threads=max(1, share - loaders), dataloader_workers=loaders)


def workers_to_start(requested: int, devices: Sequence[str], cpus: int) -> int:
    """How many of the `requested` xdist workers a session starts to train locally on
    `devices`: on the CPU, one a core at most. A worker beyond the training slots
    would only wait for one, and its start (imports, its tests' setup) takes cores
    from the runs that train: `-n 4` on 2 cores took 1.11x the wall of `-n 2`.
    Runs beyond the workers wait in xdist's queue instead. GPUs take every worker
    asked for (several runs share a GPU)."""
    if requested > cpus and all(label == CPU for label in devices):
        return cpus
    return requested


def describe(
    requested: str, found: Found, devices: Sequence[str], workers: int, cpus: int, workers_asked: int | None = None
) -> str:
    """The header's line: which devices were found and selected, and how runs are placed
    (`workers`: those started, out of `workers_asked` by -n)."""
    why = f"auto: {_found_text(found)}" if requested == AUTO else f"--device {requested}; found {_found_text(found)}"
    first = place(0, workers, devices, cpus)
    each = f"{first.threads} thread{'s' if first.threads != 1 else ''}"
    if first.dataloader_workers:
        each += f" and {first.dataloader_workers} dataloader worker{'s' if first.dataloader_workers != 1 else ''}"
    runs = f"{workers} worker{'s' if workers != 1 else ''}"
    if workers_asked and workers_asked != workers:
        one_a_core = first.kind == CPU and workers == min(workers_asked, cpus)
        fewer = "one a core: the others would wait for a core" if one_a_core else "one a selected test at most"
        runs += f" of -n {workers_asked} ({fewer})"
    runs += f", {each} each"
    if first.kind == CPU:
        slots = min(first.slots, workers)
        runs += f", {slots} training slot{'s' if slots != 1 else ''} on {cpus} core{'s' if cpus != 1 else ''}"
    elif len(devices) > 1 or workers > 1:
        per = [sum(1 for w in range(workers) if w % len(devices) == d) for d in range(len(devices))]
        runs += ", runs per device: " + ", ".join(f"{d.split()[0]} {n}" for d, n in zip(devices, per, strict=True))
    return f"devices: {', '.join(devices)} ({why}) — {runs}"


def worker_id(workerid: str) -> int:
    """xdist's `gw<k>` -> k (its ordinal: a replacement for a dead worker counts on)."""
    return int(workerid.removeprefix("gw"))


@contextlib.contextmanager
def worker_slot(folder: Path, workers: int, ordinal: int) -> Iterator[int]:
    """Hold this worker's place (0..workers-1, what `place` takes) for its life: its
    ordinal where that place is free, else the lowest free one. xdist replaces a dead
    worker with a new ordinal (gw2 of 2): the lowest free place is exactly the dead
    worker's, with its device and cores (ordinal mod count could land on a live
    worker's). The locks are flocks: a killed worker's place is free again at once."""
    folder.mkdir(parents=True, exist_ok=True)
    order = ([ordinal] if 0 <= ordinal < workers else []) + [i for i in range(workers) if i != ordinal]
    with _first_free([folder / f"worker-{index}.lock" for index in order]) as held:
        # Every place held (a worker outliving its replacement's start): share by ordinal.
        yield order[held] if held is not None else ordinal % workers


@contextlib.contextmanager
def _first_free(paths: list[Path]) -> Iterator[int | None]:
    """Hold the first free of the flocks at `paths` and yield its index; None when
    every one is held."""
    from filelock import FileLock, Timeout  # torch's own dependency

    for index, path in enumerate(paths):
        lock = FileLock(str(path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        try:
            yield index
        finally:
            lock.release()
        return
    yield None


@contextlib.contextmanager
def slot(folder: Path, count: int, *, poll: float = 0.2) -> Iterator[int | None]:
    """Hold one of `count` training slots shared through lock files in `folder` (a
    session's work folder: every worker of the session sees it); waits for a free
    one. count 0: no limit. The locks are the kernel's (flock), so a killed worker's
    slot is free again at once."""
    if count <= 0:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"slot-{i}.lock" for i in range(count)]
    while True:
        with _first_free(paths) as index:
            if index is not None:
                yield index
                return
        time.sleep(poll)  # interruptible: Ctrl-C while waiting stops the wait
