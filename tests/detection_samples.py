"""Constructed per-image evaluations whose answers are known."""

from __future__ import annotations

import numpy as np

from mlflow_cv_yolo.decide import detection_stats as stats
from mlflow_cv_yolo.train.per_image import ImageRecord


def record(name: str, gts: list, preds: list, gt_cls: list | None = None) -> ImageRecord:
    """gts: xyxy boxes (class 0 unless `gt_cls` says); preds: (xyxy, conf[, class]),
    matched as COCO does."""
    preds = sorted(preds, key=lambda p: -p[1])
    gt = np.array(gts, float).reshape(-1, 4)
    boxes = np.array([p[0] for p in preds], float).reshape(-1, 4)
    r = ImageRecord(
        name,
        np.array(gt_cls if gt_cls is not None else [0] * len(gt), int),
        gt,
        np.array([p[2] if len(p) > 2 else 0 for p in preds], int),
        np.array([p[1] for p in preds], float),
        boxes,
        np.zeros((len(boxes), 10), bool),
    )
    tp, _ = stats.match(r, (0.0, 1e30))
    return ImageRecord(r.name, r.gt_cls, r.gt_boxes, r.pred_cls, r.conf, r.pred_boxes, tp)


def scene(n_images: int, found: int, seed: int, per_image: int = 3) -> list[ImageRecord]:
    """Images of `per_image` persons, of which the model finds the first `found`
    (boxes a little off, so IoU varies), plus one false positive each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        gts = [[10 + 60 * k, 10, 50 + 60 * k, 90] for k in range(per_image)]
        preds = [([x + rng.uniform(-3, 3) for x in g], rng.uniform(0.5, 1.0)) for g in gts[:found]]
        preds.append(([300, 300, 340, 340], rng.uniform(0.1, 0.9)))
        out.append(record(f"{i:04d}.jpg", gts, preds))
    return out
