"""review.md and the gallery of flipped images, written by the report beside report.html."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from detection_samples import scene
from matplotlib.image import imsave
from PIL import Image
from report_samples import history, record, write

from mlflow_cv_yolo.decide import bootstrap
from mlflow_cv_yolo.decide.decision import Criteria, Criterion, Decision
from mlflow_cv_yolo.decide.promotion import ci_criteria
from mlflow_cv_yolo.present import review
from mlflow_cv_yolo.train.per_image import save_records

ON_VAL = "candidate 0.3000 vs production v1 0.2900 on val"


def compared(tmp_path: Path) -> Decision:
    """A rejected challenger that finds fewer persons than the champion on 4 of 30 images."""
    champion = scene(30, 2, seed=1)
    candidate = [
        dataclasses.replace(r, conf=np.where(r.conf >= 0.5, 0.1, r.conf)) if i < 4 else r
        for i, r in enumerate(champion)
    ]
    images = tmp_path / "images"
    images.mkdir()
    for r in champion:
        imsave(images / r.name, np.full((360, 400, 3), 0.5))
    rows = bootstrap.compare(candidate, champion, resamples=200)
    checks = (Criterion("complete session", None, None, True), *ci_criteria(rows, Criteria(0.25, 0.0, 0.0), ON_VAL))
    return Decision(
        "rejected",
        "improvement over champion failed: nothing registered",
        "s1",
        candidate="imgsz416-seed42",
        criteria=checks,
        champion={"version": "1"},
        deltas=tuple(dataclasses.asdict(r) for r in rows),
        evaluations={
            "candidate-test": str(save_records(candidate, tmp_path / "candidate.npz")),
            "champion-test": str(save_records(champion, tmp_path / "champion.npz")),
            "test-images": str(images),
        },
    )


def test_review_md_has_the_decision_the_delta_table_and_the_flips(tmp_path):
    runs = [record("imgsz416-seed42", "imgsz416", 0.52, start=1, imgsz="416", seed="42")]
    files = write(tmp_path, runs, {runs[0].run_id: history(0.52, 3)}, compared(tmp_path).to_dict())
    text = files.review.read_text()
    assert files.review == files.html.with_name("review.md")
    lines = text.splitlines()
    assert lines[:4] == [
        review.MARKER,
        "## Promotion gate: REJECTED",
        "",
        "**REJECTED** — improvement over champion failed: nothing registered",
    ]
    assert "| test mAP50-95 | candidate | champion | Δ | 95% interval | images | objects | gated |" in lines
    assert [line.split(" | ")[0] for line in lines if line.startswith("| 000")] == [f"| {i:04d}.jpg" for i in range(4)]
    assert [line for line in lines if line.startswith("| 0000.jpg")] == ["| 0000.jpg | 0 | 2 | -2 | 3 |"]
    drawn = [p for p in files.plots if p.name.startswith("flip_")]
    assert [p.name for p in drawn] == [f"flip_{i:02d}_{i:04d}.png" for i in range(4)]
    for path in drawn:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400
    page = files.html.read_text()
    assert page.count('<img alt="0') == 4 and "95% interval" in page


def test_without_a_champion_review_md_says_the_threshold_decides(tmp_path):
    runs = [record("imgsz416-seed42", "imgsz416", 0.52, start=1, imgsz="416", seed="42")]
    decision = Decision("promoted", "imgsz416-seed42 passed every criterion", "s1", candidate="imgsz416-seed42")
    files = write(tmp_path, runs, {runs[0].run_id: history(0.52, 3)}, decision.to_dict())
    assert "No version holds `production`: no Δ table, the absolute threshold decides." in files.review.read_text()
    assert not [p for p in files.plots if p.name.startswith("flip_")]
