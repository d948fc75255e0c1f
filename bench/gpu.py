"""Packing runs onto a device: the grid trained one run at a time, then all runs at once.

    python bench/gpu.py                                   # every run of experiments/grid.yaml, --device auto
    python bench/gpu.py --device 0 --runs 8 --epochs 3 --data /path/to/tiny_coco.yaml
    python bench/gpu.py --device cpu --runs 2 --epochs 1 --imgsz 64   # the CI smoke test

Both phases train through the project's own `training.train`, each run in a fresh
process (as a session's worker would, imports included): first one after another,
each placed as the only worker (`devices.place(0, 1, ...)`); then every run in its
own process at once, run k placed as worker k of N (`devices.place(k, N, ...)`: on
one GPU all of them share it; on the CPU the training slots apply). It prints both
walls, their ratio and the device, and whether each run's best mAP50-95 came out the
same both ways. Aim on one GPU: packed <= 0.25 x one at a time.

Needs only torch and ultralytics (no MLflow, no tracking stack); results are appended
to bench/out/gpu.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the checkout's code, installed or not

from mlflow_cv_yolo.train import devices, training, weights  # noqa: E402  (none of them imports MLflow)
from mlflow_cv_yolo.train.grid import expand, load_grid  # noqa: E402

OUT = REPO / "bench" / "out"


def _train(
    config, data: str, model: str, project: str, placement: devices.Placement, amp_checked: str | None, slots: str
) -> tuple[str, tuple[float, float | None, bool]]:
    """One run in its own process; returns its id, best val mAP50-95, torch's peak GPU
    memory (MiB; None off CUDA) and whether the trainer used AMP."""
    with devices.slot(Path(slots), placement.slots):
        result = training.train(
            config,
            data=Path(data),
            model=model,
            project=Path(project),
            threads=placement.threads,
            device=placement.device,
            dataloader_workers=placement.dataloader_workers,
            amp=placement.kind == "cuda",
            amp_checked=amp_checked,
        )
    return config.id, (
        result.best_metrics.get("metrics/mAP50-95(B)", float("nan")),
        result.peak_gpu_memory_mb,
        result.amp,
    )


def _phase(configs, placements, args, model: str, amp_checked: str | None, folder: Path, *, at_once: bool):
    # spawn: CUDA cannot be used in a forked child. An executor, not multiprocessing.Pool:
    # a Pool's processes are daemons, which may not start the dataloader's workers.
    context = multiprocessing.get_context("spawn")
    jobs = [
        (c, str(args.data), model, str(folder / c.id), p, amp_checked, str(folder / ".slots"))
        for c, p in zip(configs, placements, strict=True)
    ]
    start = time.monotonic()
    if at_once:
        with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
            results = [f.result() for f in [pool.submit(_train, *job) for job in jobs]]
    else:
        results = []
        for job in jobs:  # a fresh process per run, one after another
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                results.append(pool.submit(_train, *job).result())
    return time.monotonic() - start, dict(results)


def _device(text: str) -> str:
    try:
        return devices.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, mps or N[,M...]")
    parser.add_argument("--runs", type=int, default=None, help="the first RUNS grid points (default: all 8)")
    parser.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    parser.add_argument("--imgsz", type=int, default=None, help="override the grid's imgsz (e.g. 64 for a smoke test)")
    parser.add_argument("--grid", type=Path, default=REPO / "experiments" / "grid.yaml")
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / "data" / "coco_persons.yaml",
        help="dataset yaml (default: the repository's 60 tiny_coco images)",
    )
    args = parser.parse_args()

    overrides = [(k, [str(v)]) for k, v in (("epochs", args.epochs), ("imgsz", args.imgsz)) if v is not None]
    configs = expand(load_grid(args.grid, overrides))[: args.runs]
    try:
        selected = devices.select(args.device, devices.probe())
    except devices.DeviceError as exc:
        parser.exit(4, f"{exc}\n")
    cpus = devices.cpu_count()
    model = weights.resolve(configs[0].model)
    first = selected[0].split()[0]
    amp_checked = training.amp_check(first) if first.startswith("cuda") else None
    n = len(configs)
    print(
        f"{n} runs of {args.grid.name} on {', '.join(selected)} ({cpus} cores); model {model.used}"
        + (f"; AMP check: {amp_checked}" if amp_checked else ""),
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        serial_s, serial = _phase(
            configs,
            [devices.place(0, 1, selected, cpus)] * n,
            args,
            model.used,
            amp_checked,
            Path(tmp) / "serial",
            at_once=False,
        )
        print(f"one at a time: {serial_s:.1f} s", flush=True)
        packed = [devices.place(k, n, selected, cpus) for k in range(n)]
        packed_s, together = _phase(configs, packed, args, model.used, amp_checked, Path(tmp) / "packed", at_once=True)
    same = {c.id: serial[c.id][0] == together[c.id][0] for c in configs}
    result = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": ", ".join(selected),
        "cores": cpus,
        "runs": n,
        "epochs": configs[0].epochs,
        "imgsz": sorted({c.imgsz for c in configs}),
        "data": str(args.data),
        "model": model.used,
        "serial_s": round(serial_s, 1),
        "packed_s": round(packed_s, 1),
        "ratio": round(packed_s / serial_s, 3),
        "placement": describe_packed(packed),
        "same_best_map": all(same.values()),
        "best_map": {c.id: [serial[c.id][0], together[c.id][0]] for c in configs},
        "peak_gpu_memory_MiB": {c.id: [serial[c.id][1], together[c.id][1]] for c in configs},
        "amp": sorted({str(r[2]) for r in (*serial.values(), *together.values())}),
    }
    print(f"all {n} at once: {packed_s:.1f} s ({result['placement']})")
    print(
        f"packed / one at a time = {result['ratio']:.3f} on {result['device']} (aim on one GPU: <= 0.25); "
        f"best mAP50-95 the same both ways: {'yes' if result['same_best_map'] else 'NO: ' + str(result['best_map'])}"
    )
    peaks = [m for pair in result["peak_gpu_memory_MiB"].values() for m in pair if m is not None]
    if peaks:
        print(
            f"peak GPU memory a run (torch's allocation): {min(peaks):.0f}-{max(peaks):.0f} MiB; AMP used: "
            f"{', '.join(result['amp'])}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "gpu.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


def describe_packed(placements: list[devices.Placement]) -> str:
    p = placements[0]
    where = ", ".join(sorted({q.device for q in placements}))
    text = f"{len(placements)} processes on {where}, {p.threads} threads and {p.dataloader_workers} dataloader"
    text += " workers each"
    return text + (f", {p.slots} training slots" if p.slots else "")


if __name__ == "__main__":
    main()
