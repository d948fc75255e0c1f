"""AP50-95 from kept per-image evaluations, overall, by COCO object size and by slice.

A *view* is the predictions and ground truths that count for one figure. Sizes follow
COCOeval's rule (areas in the dataset's image pixels): ground truths outside the size
range are ignored, a prediction matched to an ignored ground truth is ignored, and an
unmatched prediction is ignored when its own box area is outside the range. Matching
is COCO's greedy one (by descending confidence, best unclaimed IoU, per threshold,
in-range ground truths before ignored ones). A slice is a subset of images; its view
keeps the overall matching. Point figures come from ultralytics' `ap_per_class`;
`weighted_map` computes the same figure for many image weightings at once (the
bootstrap's resamples) and equals it at unit weights."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mlflow_cv_yolo.errors import DatasetError
from mlflow_cv_yolo.train.per_image import IOU_THRESHOLDS, ImageRecord

SIZES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
ALL = (0.0, math.inf)
_AP_X = np.linspace(0, 1, 101)


@dataclass(frozen=True)
class View:
    """Predictions sorted by descending confidence, and ground-truth counts per image."""

    img: np.ndarray  # (N,) image index of each prediction
    cls: np.ndarray  # (N,) class
    conf: np.ndarray  # (N,)
    tp: np.ndarray  # (N, 10) bool: matched at each IoU threshold
    fp: np.ndarray  # (N, 10) bool: counted and unmatched (ignored predictions are neither)
    classes: np.ndarray  # (C,) classes with at least one ground truth in the view
    gt: np.ndarray  # (I, C) ground truths of each class on each image

    @property
    def objects(self) -> int:
        return int(self.gt.sum())


def only(v: View, cls: int) -> View:
    """The part of a view about one class."""
    keep, column = v.cls == cls, v.classes == cls
    return View(v.img[keep], v.cls[keep], v.conf[keep], v.tp[keep], v.fp[keep], v.classes[column], v.gt[:, column])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).clip(0).prod(1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def match(record: ImageRecord, area: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp), each (n, 10), of one image's predictions for ground truths with area in [lo, hi)."""
    n, thresholds = len(record.conf), IOU_THRESHOLDS
    if area == ALL:  # ultralytics' own matching, so the overall figure is the validator's
        return record.tp, ~record.tp
    lo, hi = area
    a = record.gt_area
    inside = (a >= lo) & (a < hi)
    iou = _iou(record.pred_boxes, record.gt_boxes) * (record.pred_cls[:, None] == record.gt_cls[None])
    steps = np.arange(len(thresholds))
    tp = np.zeros((n, len(thresholds)), bool)
    ignored = np.zeros((n, len(thresholds)), bool)
    claimed = np.zeros((len(a), len(thresholds)), bool)
    for j in np.flatnonzero((iou >= thresholds[0]).any(1)):  # by descending confidence
        ok = ~claimed & (iou[j][:, None] >= thresholds)  # (m, 10) unclaimed and close enough
        in_range = ok & inside[:, None]
        # An in-range ground truth beats any ignored one; the highest IoU among them wins.
        allowed = in_range | (ok & ~in_range.any(0))
        k = np.where(allowed, iou[j][:, None], -1.0).argmax(0)
        hit = allowed[k, steps]
        claimed[k[hit], steps[hit]] = True
        tp[j], ignored[j] = hit & inside[k], hit & ~inside[k]
    p = record.pred_area
    outside = ~((p >= lo) & (p < hi))
    ignored |= ~tp & outside[:, None]
    return tp, ~tp & ~ignored


def view(records: Sequence[ImageRecord], area: tuple[float, float] = ALL, images: np.ndarray | None = None) -> View:
    """The view of `records` for ground truths of `area` on the images where `images` is True."""
    keep = np.ones(len(records), bool) if images is None else np.asarray(images, bool)
    lo, hi = area
    tps, fps, imgs, clss, confs = [], [], [], [], []
    gt_cls = []
    for i, r in enumerate(records):
        if not keep[i]:
            continue
        tp, fp = match(r, area)
        tps.append(tp), fps.append(fp), clss.append(r.pred_cls), confs.append(r.conf)
        imgs.append(np.full(len(r.conf), i))
        a = r.gt_area
        gt_cls.append((i, r.gt_cls[(a >= lo) & (a < hi)]))
    classes = np.unique(np.concatenate([c for _, c in gt_cls])) if gt_cls else np.zeros(0, int)
    gt = np.zeros((len(records), len(classes)), int)
    for i, c in gt_cls:
        gt[i] = (c[:, None] == classes[None]).sum(0)
    if not tps:
        empty = np.zeros((0, len(IOU_THRESHOLDS)), bool)
        return View(np.zeros(0, int), np.zeros(0, int), np.zeros(0), empty, empty, classes, gt)
    conf = np.concatenate(confs)
    order = np.argsort(-conf, kind="stable")
    return View(
        np.concatenate(imgs)[order],
        np.concatenate(clss)[order],
        conf[order],
        np.concatenate(tps)[order],
        np.concatenate(fps)[order],
        classes,
        gt,
    )


def point_map(v: View) -> float | None:
    """mAP50-95 of a view by ultralytics' `ap_per_class`, one IoU threshold at a time
    (a prediction may be ignored at one threshold and counted at another); None
    without ground truth."""
    from ultralytics.utils.metrics import ap_per_class

    if not len(v.classes):
        return None
    target = np.repeat(v.classes, v.gt.sum(0))
    ap = np.zeros((len(v.classes), len(IOU_THRESHOLDS)))
    for t in range(len(IOU_THRESHOLDS)):
        counted = v.tp[:, t] | v.fp[:, t]
        tp = v.tp[counted, t : t + 1]
        ap[:, t] = ap_per_class(tp, v.conf[counted], v.cls[counted], target)[5][:, 0]
    return float(ap.mean())


def weighted_map(v: View, weights: np.ndarray) -> np.ndarray:
    """mAP50-95 for each row of `weights` (R, I), an image's weight being how often a
    resample draws it; NaN for a row with no ground truth. Vectorised over resamples.

    Exact and smaller than the whole precision-recall curve: the envelope, and so AP,
    depends only on each true positive's point and, before it, the last false positive's
    (the lowest precision at the previous recall); predictions after the last true
    positive change nothing. So each curve is 2K + 1 points for K true positives, the
    false positives' weights summed per image and segment with one matrix product."""
    weights = np.atleast_2d(weights).astype(float)
    rows, n_images = weights.shape
    n_gt = weights @ v.gt  # (R, C)
    ap = np.zeros((rows, len(v.classes), len(IOU_THRESHOLDS)))
    for ci, c in enumerate(v.classes):
        sel = np.flatnonzero(v.cls == c)
        img = v.img[sel]
        for t in range(len(IOU_THRESHOLDS)):
            hits = np.flatnonzero(v.tp[sel, t])
            if not len(hits):
                continue  # AP 0 on every resample
            misses = np.flatnonzero(v.fp[sel[: hits[-1]], t])
            counts = np.zeros((n_images, len(hits)))
            np.add.at(counts, (img[misses], np.searchsorted(hits, misses)), 1.0)
            before = weights @ np.cumsum(counts, axis=1)  # false-positive weight ranked above each hit
            found = np.cumsum(weights[:, img[hits]], axis=1)
            ap[:, ci, t] = _ap_points(found, before, n_gt[:, ci])
    ap[n_gt == 0] = np.nan
    if not len(v.classes):
        return np.full(rows, np.nan)
    counted = np.isfinite(ap).reshape(rows, -1)
    total = np.where(counted, ap.reshape(rows, -1), 0.0).sum(1)
    return np.divide(total, counted.sum(1), out=np.full(rows, np.nan), where=counted.any(1))


def _ap_points(found: np.ndarray, before: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """AP per row from the cumulative true-positive weight at each hit and the
    false-positive weight ranked above it."""
    after = np.concatenate([before[:, 1:], before[:, -1:]], axis=1)  # above the next hit (none past the last)

    def precision(fp: np.ndarray) -> np.ndarray:
        total = found + fp
        return np.divide(found, total, out=np.ones_like(found), where=total > 0)

    rows, k = found.shape
    recall = np.repeat(found / (n_gt[:, None] + 1e-16), 2, axis=1)
    points = np.empty((rows, 2 * k))
    points[:, 0::2], points[:, 1::2] = precision(before), precision(after)
    lead = np.where(before[:, :1] > 0, 0.0, 1.0)  # false positives ranked above the first hit
    return _ap_rows(np.concatenate([np.zeros((rows, 1)), recall], 1), np.concatenate([lead, points], 1))


def _ap_rows(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """ultralytics' `compute_ap` for each row: the precision envelope, interpolated at
    101 recall points as `np.interp` does, integrated by the trapezoid rule."""
    rows = len(recall)
    mrec = np.concatenate([np.zeros((rows, 1)), recall, recall[:, -1:], np.ones((rows, 1))], axis=1)
    mpre = np.concatenate([np.ones((rows, 1)), precision, np.zeros((rows, 2))], axis=1)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 1), axis=1), 1)
    width = mrec.shape[1]
    # One sorted array for every row: row r's recalls shifted by 2r, queried all at once.
    shift = 2.0 * np.arange(rows)[:, None]
    flat = (mrec + shift).ravel()
    queries = (_AP_X[None] + shift).ravel()
    j = np.searchsorted(flat, queries, side="right") - 1
    row_end = (np.arange(rows)[:, None] * width + width - 1).repeat(len(_AP_X), 1).ravel()
    j = np.minimum(j, row_end)
    nxt = np.minimum(j + 1, row_end)
    x0, x1 = flat[j], flat[nxt]
    y0, y1 = mpre.ravel()[j], mpre.ravel()[nxt]
    span = x1 - x0
    frac = np.divide(queries - x0, span, out=np.zeros_like(span), where=span > 0)
    y = np.where(j == row_end, y0, y0 + frac * (y1 - y0)).reshape(rows, len(_AP_X))
    return np.trapezoid(y, _AP_X, axis=1)


@dataclass(frozen=True)
class Slice:
    """A named subset of a split's images: by a count rule, or listed by file name."""

    name: str
    rule: str  # as written in the slices file
    op: str | None = None
    count: int | None = None
    cls: int | None = None
    images: frozenset[str] = frozenset()

    def select(self, records: Sequence[ImageRecord]) -> np.ndarray:
        if self.op is None:
            return np.array([r.name in self.images for r in records], bool)
        counts = np.array([int((r.gt_cls == self.cls).sum()) for r in records])
        return _OPS[self.op](counts, self.count)


_OPS = {
    ">=": np.greater_equal,
    "<=": np.less_equal,
    "==": np.equal,
    ">": np.greater,
    "<": np.less,
}
_RULE = re.compile(r"^\s*(>=|<=|==|>|<)\s*(\d+)\s+(\S+?)\s*$")


def dataset_names(data: Path) -> dict[int, str]:
    """The class names of a dataset yaml (a mapping or a list, as ultralytics reads them)."""
    names = (yaml.safe_load(data.read_text()) or {}).get("names", {})
    return dict(enumerate(names)) if isinstance(names, list) else {int(k): str(v) for k, v in names.items()}


def split_images(data: Path, split: str = "test") -> Path:
    """The folder of one split's images, as ultralytics resolves it from the dataset yaml."""
    spec = yaml.safe_load(data.read_text()) or {}
    return data.parent / spec.get("path", "") / spec[split]


def slices_path(data: Path) -> Path:
    """Where a dataset's slices live: data/coco_persons.yaml -> data/coco_persons.slices.yaml."""
    return data.with_name(data.stem + ".slices.yaml")


def load_slices(path: Path, names: dict[int, str]) -> list[Slice]:
    """The slices of a slices file; [] when the dataset ships none. Each entry is
    `name: ">= 4 person"` (a count of one class's ground truths per image; a plural
    `persons` works too) or `name: [image file names]`."""
    if not path.is_file():
        return []
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of slice names to rules, got {type(raw).__name__}")
    by_name = {v: k for k, v in names.items()}
    out = []
    for name, rule in raw.items():
        if isinstance(rule, list) and all(isinstance(x, str) for x in rule):
            out.append(Slice(str(name), f"{len(rule)} listed images", images=frozenset(rule)))
            continue
        m = _RULE.match(rule) if isinstance(rule, str) else None
        cls_name = m and (m[3] if m[3] in by_name else m[3][:-1] if m[3].endswith("s") else m[3])
        if not m or cls_name not in by_name:
            raise DatasetError(
                f"{path}: slice {name!r}: {rule!r} is not '<op> <count> <class>' (op one of "
                f"{', '.join(_OPS)}; class one of {', '.join(by_name)}) nor a list of image file names"
            )
        out.append(Slice(str(name), rule, m[1], int(m[2]), by_name[cls_name]))
    return out
