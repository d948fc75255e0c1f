"""Training one grid configuration with ultralytics, on the CPU, with the
caller's callbacks attached to the trainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import interrupts
from .grid import RunConfig

# Artifacts ultralytics writes into save_dir with plots=True; the curves are
# prefixed "Box" for detection.
PLOTS = ("results.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "BoxPR_curve.png",
         "BoxF1_curve.png", "BoxP_curve.png", "BoxR_curve.png")


@dataclass(frozen=True)
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    # Metrics of best.pt on the val split, ultralytics' names (e.g. "metrics/mAP50-95(B)").
    best_metrics: dict[str, float]


def _drop_integrations(trainer) -> None:
    # ultralytics adds a callback per logger it finds installed (MLflow, Ray Tune, DVC,
    # W&B, ...): its MLflow one would open a second run beside ours (it is off under
    # pytest only by a name check on the test), the others log elsewhere or warn
    # (Ray Tune's, outside a Tune trial). We own the run; only ultralytics' base stays.
    for event, fns in trainer.callbacks.items():
        trainer.callbacks[event] = [f for f in fns if not f.__module__.startswith("ultralytics.utils.callbacks.")
                                    or f.__module__ == "ultralytics.utils.callbacks.base"]


def train(run: RunConfig, *, data: Path, model: str, project: Path, threads: int,
          callbacks: dict[str, Callable] | None = None, verbose: bool = False, device: str = "cpu") -> TrainResult:
    """Train `run` from `model` (a .pt to fine-tune or a .yaml to train from scratch)."""
    import torch
    from ultralytics import YOLO

    if not verbose:
        logging.getLogger("ultralytics").setLevel(logging.WARNING)

    def setup(trainer) -> None:
        _drop_integrations(trainer)
        # ultralytics sets cpu_count-1 threads; under xdist each worker gets its share.
        torch.set_num_threads(threads)

    yolo = YOLO(model)
    yolo.add_callback("on_pretrain_routine_start", setup)
    for event in ("on_train_batch_end", "on_val_batch_end"):
        yolo.add_callback(event, interrupts.check)
    for event, fn in (callbacks or {}).items():
        yolo.add_callback(event, fn)
    yolo.train(
        data=str(data), epochs=run.epochs, batch=run.batch, imgsz=run.imgsz, lr0=run.lr0, seed=run.seed,
        optimizer=run.optimizer, deterministic=True, device=device, workers=0, amp=False, plots=True,
        project=str(project), name=run.id, exist_ok=True, verbose=verbose)
    trainer = yolo.trainer
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    return TrainResult(Path(trainer.save_dir), Path(trainer.best), Path(trainer.last), metrics)


def evaluate(weights: Path, *, data: Path, imgsz: int, split: str, project: Path, name: str) -> dict[str, float]:
    """mAP of `weights` on one split of `data` (e.g. the held-out test split)."""
    from ultralytics import YOLO

    logging.getLogger("ultralytics").setLevel(logging.WARNING)
    metrics = YOLO(str(weights)).val(data=str(data), split=split, imgsz=imgsz, batch=8, device="cpu",
                                     workers=0, plots=False, project=str(project), name=name,
                                     exist_ok=True, verbose=False)
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}
