"""Training one grid configuration with ultralytics on the device it is given, with
the caller's callbacks attached to the trainer; evaluating weights on a split.

Imports neither MLflow nor torch at module level: bench/gpu.py trains through it
where only torch and ultralytics are installed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.train import interrupts
from mlflow_cv_yolo.train.grid import OPTIONAL, RunConfig

# Artifacts ultralytics writes into save_dir with plots=True; the curves are
# prefixed "Box" for detection.
PLOTS = (
    "results.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "BoxPR_curve.png",
    "BoxF1_curve.png",
    "BoxP_curve.png",
    "BoxR_curve.png",
)


@dataclass(frozen=True)
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    # Metrics of best.pt on the val split, ultralytics' names (e.g. "metrics/mAP50-95(B)").
    best_metrics: dict[str, float]
    amp: bool = False  # mixed precision, as the trainer used it
    peak_gpu_memory_mb: float | None = None  # torch's peak allocation on the run's CUDA device
    start_epoch: int = 0  # the first epoch trained (0-based): > 0 when resumed
    last_epoch: int = 0  # the last epoch trained (1-based): below `epochs` when stopped early
    stopped_early: str | None = None  # why training ended before `epochs`, in words


def stop_reason(trainer) -> str | None:
    """Why ultralytics ended training before its last epoch (patience, its `time`
    limit), or None where it ran every epoch."""
    last = trainer.epoch + 1
    if last >= trainer.epochs:
        return None
    stopper = trainer.stopper
    if stopper.patience and last - stopper.best_epoch >= stopper.patience:
        idle = last - stopper.best_epoch
        return (
            f"no improvement for {idle} epoch{'s' if idle != 1 else ''} (patience {stopper.patience}); "
            f"best epoch {stopper.best_epoch}"
        )
    if trainer.args.time:
        return f"time limit of {trainer.args.time} h reached"
    return "stopped by the trainer"


# The weights ultralytics' AMP check loads (and downloads when they are missing).
AMP_WEIGHTS = "yolo26n.pt"


def amp_check(device: str) -> str:
    """ultralytics' AMP check, run once (a session's, a benchmark's) rather than by
    every trainer: `passed`, `failed[: why]` (AMP off) or `skipped: why`. It needs
    yolo26n.pt; offline, its download would hang or fail the run, so where the file
    is not on disk the check is skipped and AMP stays on, unchecked."""
    if not device.startswith("cuda"):
        return f"skipped: no AMP on {device}"
    from ultralytics.utils import WEIGHTS_DIR

    weights = WEIGHTS_DIR / AMP_WEIGHTS
    if not weights.is_file():
        return f"skipped: {weights} is not on disk (no download tried)"
    from ultralytics import YOLO
    from ultralytics.utils import callbacks
    from ultralytics.utils.checks import check_amp

    backup = callbacks.default_callbacks.copy()  # check_amp resets them (ultralytics' trainer does the same)
    try:
        model = YOLO("yolov8n.yaml").model.to(device)  # the check reads only the device and stride
        return "passed" if check_amp(model) else "failed"
    except Exception as exc:  # a check that cannot run vouches for nothing: AMP off
        return f"failed: the check raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        callbacks.default_callbacks.clear()
        callbacks.default_callbacks.update(backup)


@contextlib.contextmanager
def _amp_verdict(passed: bool):
    """The trainer asks check_amp itself; it gets the verdict checked once instead."""
    from ultralytics.engine import trainer

    original = trainer.check_amp
    trainer.check_amp = lambda model: passed
    try:
        yield
    finally:
        trainer.check_amp = original


def _drop_integrations(trainer) -> None:
    # ultralytics adds a callback per installed logger; its MLflow one would open a second run beside ours.
    for event, fns in trainer.callbacks.items():
        trainer.callbacks[event] = [
            f
            for f in fns
            if not f.__module__.startswith("ultralytics.utils.callbacks.")
            or f.__module__ == "ultralytics.utils.callbacks.base"
        ]


def train(
    run: RunConfig,
    *,
    data: Path,
    model: str,
    project: Path,
    threads: int,
    device: str = "cpu",
    dataloader_workers: int = 0,
    amp: bool = False,
    amp_checked: str | None = None,
    callbacks: dict[str, Callable] | None = None,
    verbose: bool = False,
    resume: Path | None = None,
) -> TrainResult:
    """Train `run` from `model` (a .pt to fine-tune or a .yaml to train from scratch)
    on `device` ("cpu", "cuda:1", "mps"), or continue it from `resume` (an interrupted
    training's last.pt, in its own folder). `amp` applies on CUDA only, with the
    verdict of `amp_check` (`failed` turns it off), checked here when not given."""
    import torch
    from ultralytics import YOLO

    if not verbose:
        logging.getLogger("ultralytics").setLevel(logging.WARNING)

    def setup(trainer) -> None:
        _drop_integrations(trainer)
        # ultralytics sets cpu_count-1 threads; under xdist each worker gets its share.
        torch.set_num_threads(threads)

    yolo = YOLO(str(resume) if resume else model)
    yolo.add_callback("on_pretrain_routine_start", setup)
    for event in ("on_train_batch_end", "on_val_batch_end"):
        yolo.add_callback(event, interrupts.check)
    for event, fn in (callbacks or {}).items():
        yolo.add_callback(event, fn)
    cuda = device.startswith("cuda")
    if cuda:
        # Before CUDA is initialised, resetting the peak raises "Invalid device argument" (pytorch#49952).
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
        if amp and amp_checked is None:
            amp_checked = amp_check(device)
    with _amp_verdict(not (amp_checked or "").startswith("failed")):
        yolo.train(
            data=str(data),
            epochs=run.epochs,
            batch=run.batch,
            imgsz=run.imgsz,
            lr0=run.lr0,
            seed=run.seed,
            optimizer=run.optimizer,
            deterministic=True,
            device=device,
            workers=dataloader_workers,
            amp=amp and cuda,
            patience=run.values.get("patience", OPTIONAL["patience"]),
            plots=True,
            verbose=verbose,
            **(
                {"resume": str(resume)}
                if resume
                # resumed: the checkpoint's own folder
                else {"project": str(project), "name": run.id, "exist_ok": True}
            ),
        )
    trainer = yolo.trainer
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return TrainResult(
        Path(trainer.save_dir),
        Path(trainer.best),
        Path(trainer.last),
        metrics,
        amp=bool(trainer.amp),
        peak_gpu_memory_mb=peak,
        start_epoch=trainer.start_epoch,
        last_epoch=trainer.epoch + 1,
        stopped_early=stop_reason(trainer),
    )


def evaluation_device() -> str:
    """Where weights are evaluated when nobody says: the first GPU if torch sees one."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def evaluate(
    weights: Path, *, data: Path, imgsz: int, split: str, project: Path, name: str, device: str | None = None
) -> dict[str, float]:
    """mAP of `weights` on one split of `data` (e.g. the held-out test split), on
    `device` (default: `evaluation_device()`). ultralytics loads every checkpoint
    onto the CPU first, so weights trained on a GPU evaluate anywhere."""
    from ultralytics import YOLO

    logging.getLogger("ultralytics").setLevel(logging.WARNING)
    metrics = YOLO(str(weights)).val(**val_arguments(data, split, imgsz, project, name, device))
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}


def val_arguments(data: Path, split: str, imgsz: int, project: Path, name: str, device: str | None) -> dict:
    """ultralytics' `val` arguments of every evaluation the session makes."""
    return dict(
        data=str(data),
        split=split,
        imgsz=imgsz,
        batch=8,
        device=device or evaluation_device(),
        workers=0,
        plots=False,
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
    )
