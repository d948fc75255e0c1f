"""Evaluating weights on a split while keeping what each image contributed: its
predictions (boxes, confidences, classes, and ultralytics' correct-at-10-IoUs
matrix) and its ground truth, in original-image pixels. The kept records are
what AP by object size, by slice, and the paired bootstrap are computed from.

Imports neither MLflow nor torch at module level, like training.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class ImageRecord:
    """One image's evaluation: n predictions sorted by descending confidence, m ground truths."""

    name: str  # the image's file name, as slices files list it
    gt_cls: np.ndarray  # (m,) int
    gt_boxes: np.ndarray  # (m, 4) xyxy, original-image pixels
    pred_cls: np.ndarray  # (n,) int
    conf: np.ndarray  # (n,) float
    pred_boxes: np.ndarray  # (n, 4) xyxy, original-image pixels
    tp: np.ndarray  # (n, 10) bool: correct at IoU 0.50:0.95, as ultralytics matched it

    @property
    def gt_area(self) -> np.ndarray:
        return _area(self.gt_boxes)

    @property
    def pred_area(self) -> np.ndarray:
        return _area(self.pred_boxes)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def save_records(records: list[ImageRecord], path: Path) -> Path:
    """One .npz: the arrays concatenated, with each image's offsets (a run artifact)."""
    n = np.cumsum([0] + [len(r.conf) for r in records])
    m = np.cumsum([0] + [len(r.gt_cls) for r in records])
    cat = lambda key, width: (  # noqa: E731
        np.concatenate([getattr(r, key) for r in records]) if records else np.zeros((0, *width))
    )
    np.savez_compressed(
        path,
        names=np.array(json.dumps([r.name for r in records])),
        pred_offsets=n,
        gt_offsets=m,
        gt_cls=cat("gt_cls", ()),
        gt_boxes=cat("gt_boxes", (4,)),
        pred_cls=cat("pred_cls", ()),
        conf=cat("conf", ()),
        pred_boxes=cat("pred_boxes", (4,)),
        tp=cat("tp", (10,)),
    )
    return path


def load_records(path: Path) -> list[ImageRecord]:
    with np.load(path) as z:
        names, n, m = json.loads(str(z["names"])), z["pred_offsets"], z["gt_offsets"]
        return [
            ImageRecord(
                name,
                z["gt_cls"][m[i] : m[i + 1]].astype(int),
                z["gt_boxes"][m[i] : m[i + 1]],
                z["pred_cls"][n[i] : n[i + 1]].astype(int),
                z["conf"][n[i] : n[i + 1]],
                z["pred_boxes"][n[i] : n[i + 1]],
                z["tp"][n[i] : n[i + 1]].astype(bool),
            )
            for i, name in enumerate(names)
        ]


def _validator_class():
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops

    class KeepingValidator(DetectionValidator):
        """ultralytics' detection validator that also keeps one ImageRecord per image."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records: list[ImageRecord] = []

        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            tps = self.metrics.stats["tp"][-len(preds) :]  # what the call above appended for this batch
            for si, (pred, tp) in enumerate(zip(preds, tps, strict=True)):
                pbatch = self._prepare_batch(si, batch)
                shape, pad = pbatch["ori_shape"], pbatch["ratio_pad"]
                gt = ops.scale_boxes(pbatch["imgsz"], pbatch["bboxes"].clone(), shape, ratio_pad=pad)
                boxes = ops.scale_boxes(pbatch["imgsz"], pred["bboxes"].clone(), shape, ratio_pad=pad)
                self.records.append(
                    ImageRecord(
                        Path(pbatch["im_file"]).name,
                        pbatch["cls"].cpu().numpy().astype(int),
                        gt.cpu().numpy().reshape(-1, 4).astype(float),
                        pred["cls"].cpu().numpy().astype(int),
                        pred["conf"].cpu().numpy().astype(float),
                        boxes.cpu().numpy().reshape(-1, 4).astype(float),
                        np.asarray(tp, dtype=bool).reshape(-1, 10),
                    )
                )

    return KeepingValidator


def evaluate_per_image(
    weights: Path, *, data: Path, imgsz: int, split: str, project: Path, name: str, device: str | None = None
) -> tuple[dict[str, float], list[ImageRecord]]:
    """`training.evaluate`'s figures and the per-image records of the same evaluation."""
    from ultralytics import YOLO

    from mlflow_cv_yolo.train.training import val_arguments

    logging.getLogger("ultralytics").setLevel(logging.WARNING)
    model = YOLO(str(weights))
    validator = _validator_class()
    kept: list[list[ImageRecord]] = []

    def keep(v) -> None:
        kept.append(v.records)

    model.add_callback("on_val_end", keep)
    metrics = model.val(validator=validator, **val_arguments(data, split, imgsz, project, name, device))
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}, kept[-1]
