"""The paired bootstrap over test images: Δ mAP50-95 (candidate − champion) with a
confidence interval, overall, by object size and by slice.

Each resample draws the split's images with replacement; both models are scored on
the same draw (paired), so what the images have in common cancels and the interval
measures the difference between the models, not between the images. A view with
fewer than `min_support` ground truths is shown but not gated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlflow_cv_yolo.decide import detection_stats as stats
from mlflow_cv_yolo.train.per_image import ImageRecord

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
# Below this many objects a bucket's AP swings by whole objects found or missed.
MIN_SUPPORT = 20


@dataclass(frozen=True)
class Delta:
    """One row of the Δ table."""

    name: str  # "overall", "small", "slice crowded", ...
    kind: str  # "overall", "size" or "slice"
    candidate: float | None
    champion: float | None
    delta: float | None  # candidate − champion, point figures
    low: float | None  # the interval's bounds on delta
    high: float | None
    images: int
    objects: int  # ground truths in the view: the support
    gated: bool  # objects >= min_support

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return "—"
        return f"[{self.low:+.4f}, {self.high:+.4f}]"


def resample_weights(n_images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n_images): how many times each resample draws each image."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    offsets = (np.arange(resamples) * n_images)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


def aligned(candidate: Sequence[ImageRecord], champion: Sequence[ImageRecord]) -> list[ImageRecord]:
    """The champion's records in the candidate's image order (both evaluated one split)."""
    by_name = {r.name: r for r in champion}
    missing = [r.name for r in candidate if r.name not in by_name]
    if missing or len(champion) != len(candidate):
        raise ValueError(f"the two evaluations cover different images (e.g. {missing[:3]}): compare one split")
    return [by_name[r.name] for r in candidate]


def interval(
    candidate: stats.View, champion: stats.View, weights: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float] | tuple[None, None]:
    """Percentile interval of Δ mAP50-95 over the resamples in `weights`, both views on
    the same rows; resamples where the view has no ground truth are left out."""
    diff = stats.weighted_map(candidate, weights) - stats.weighted_map(champion, weights)
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    candidate: Sequence[ImageRecord],
    champion: Sequence[ImageRecord],
    slices: Sequence[stats.Slice] = (),
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    min_support: int = MIN_SUPPORT,
    names: dict[int, str] | None = None,
) -> list[Delta]:
    """The Δ table: overall, each COCO size, each slice, and each class of multi-class data."""
    champion = aligned(candidate, champion)
    weights = resample_weights(len(candidate), resamples, seed)
    every = np.ones(len(candidate), bool)
    overall = stats.view(candidate), stats.view(champion)
    views = [("overall", "overall", *overall, every)]
    views += [
        (size, "size", stats.view(candidate, area), stats.view(champion, area), every)
        for size, area in stats.SIZES.items()
    ]
    for s in slices:
        images = s.select(candidate)
        views.append(
            (
                f"slice {s.name}",
                "slice",
                stats.view(candidate, images=images),
                stats.view(champion, images=images),
                images,
            )
        )
    if len(overall[0].classes) > 1:
        views += [
            (
                f"class {(names or {}).get(int(c), c)}",
                "class",
                stats.only(overall[0], c),
                stats.only(overall[1], c),
                every,
            )
            for c in overall[0].classes
        ]
    rows = []
    for name, kind, a, b, images in views:
        pa, pb = stats.point_map(a), stats.point_map(b)
        low, high = interval(a, b, weights, confidence) if pa is not None else (None, None)
        n_images = int(np.sum(images))
        rows.append(
            Delta(
                name,
                kind,
                pa,
                pb,
                None if pa is None or pb is None else pa - pb,
                low,
                high,
                n_images,
                a.objects,
                a.objects >= min_support,
            )
        )
    return rows


def figures(
    records: Sequence[ImageRecord],
    slices: Sequence[stats.Slice] = (),
    prefix: str = "test/",
    names: dict[int, str] | None = None,
) -> dict:
    """One model's AP by size, slice and (multi-class data) class, as metrics to log
    (`test/AP_small`, `test/AP_slice_crowded`, `test/AP_class_car`)."""
    out = {}
    overall = stats.view(records)
    if len(overall.classes) > 1:
        for c in overall.classes:
            value = stats.point_map(stats.only(overall, c))
            if value is not None:
                out[f"{prefix}AP_class_{(names or {}).get(int(c), c)}"] = value
    for size, area in stats.SIZES.items():
        value = stats.point_map(stats.view(records, area))
        if value is not None:
            out[f"{prefix}AP_{size}"] = value
    for s in slices:
        value = stats.point_map(stats.view(records, stats.ALL, s.select(records)))
        if value is not None:
            out[f"{prefix}AP_slice_{s.name}"] = value
    return out
