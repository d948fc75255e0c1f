"""The project's own pretrained checkpoint: yolov8n trained from scratch on the
synthetic pretraining set (data/synthetic, style `pretrain`), the weights a session
starts from where yolov8n.pt cannot be downloaded (train/weights.py), and the start of
the offline profile experiments/synthetic.yaml. Committed to git with its recipe
(dvc.yaml stage `checkpoint`), so that nobody trains it unless its inputs change.

The file keeps only what ultralytics needs to fine-tune from it (the model and the
few arguments it reads back), without dates, absolute paths or optimizer state, so
that the same training writes the same bytes and DVC can lock it."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow_cv_yolo.train.grid import RunConfig

# What ultralytics keeps of a checkpoint's arguments when it loads one (Model._reset_ckpt_args).
KEPT_ARGS = ("imgsz", "task", "single_cls")


def build_checkpoint(
    data: Path,
    out: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    lr0: float,
    seed: int,
    threads: int,
    model: str = "yolov8n.yaml",
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train `model` on `data` and write its best weights to `out`; returns their val metrics."""
    import torch

    from mlflow_cv_yolo.train import training

    config = RunConfig(
        id="checkpoint",
        config_id="checkpoint",
        values={
            "model": model,
            "optimizer": "SGD",
            "epochs": epochs,
            "batch": batch,
            "imgsz": imgsz,
            "lr0": lr0,
            "seed": seed,
        },
    )
    with tempfile.TemporaryDirectory(prefix="cv-yolo-checkpoint-") as tmp:
        result = training.train(config, data=data, model=model, project=Path(tmp), threads=threads)
        saved = torch.load(result.best, map_location="cpu", weights_only=False)
    net = saved.get("ema") or saved["model"]
    net.args = {k: v for k, v in dict(getattr(net, "args", {}) or {}).items() if k in KEPT_ARGS}
    for attr in ("pt_path", "yaml_file"):  # absolute paths of the machine that trained it
        if hasattr(net, attr):
            delattr(net, attr)
    if isinstance(getattr(net, "yaml", None), dict):
        net.yaml.pop("yaml_file", None)
    buffer = io.BytesIO()  # torch.save names the archive's folder after a file; a buffer's is fixed
    torch.save({"model": net, "train_args": dict(net.args)}, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_bytes(buffer.getvalue())
    tmp_out.replace(out)
    metrics = {
        "mAP50-95": result.best_metrics.get("metrics/mAP50-95(B)", float("nan")),
        "mAP50": result.best_metrics.get("metrics/mAP50(B)", float("nan")),
    }
    log(f"{out}: {model} trained {epochs} epochs at {imgsz} px on {data}; val mAP50-95 {metrics['mAP50-95']:.4f}")
    return metrics
