"""review.md: what a reviewer reads on the pull request. The decision in one line,
the criteria, the Δ table against the production champion with its intervals, and
the test images whose outcome flipped most, drawn with ground truth and both
models' boxes.

The file starts with a hidden marker, so the workflow finds its own pull-request
comment again and edits it instead of adding another (scripts/review_comment.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mlflow_cv_yolo.decide.decision import delta_table
from mlflow_cv_yolo.train.per_image import ImageRecord, load_records

MARKER = "<!-- cv-yolo-review -->"
# A prediction counts as found at ultralytics' default predict confidence.
FOUND_CONF = 0.25
GALLERY = 12


@dataclass(frozen=True)
class Flip:
    name: str
    candidate_found: int  # ground truths matched at IoU 0.5 by a prediction with conf >= FOUND_CONF
    champion_found: int
    objects: int

    @property
    def change(self) -> int:
        return self.candidate_found - self.champion_found


def _found(r: ImageRecord) -> int:
    return int((r.tp[:, 0] & (r.conf >= FOUND_CONF)).sum())


def flips(candidate: Sequence[ImageRecord], champion: Sequence[ImageRecord], most: int = GALLERY) -> list[Flip]:
    """The images where the two models find different numbers of objects, largest change first."""
    theirs = {r.name: r for r in champion}
    out = [
        Flip(r.name, _found(r), _found(theirs[r.name]), len(r.gt_cls))
        for r in candidate
        if r.name in theirs and _found(r) != _found(theirs[r.name])
    ]
    return sorted(out, key=lambda f: (-abs(f.change), f.change, f.name))[:most]


def draw(flip: Flip, candidate: ImageRecord, champion: ImageRecord, image: Path, out: Path) -> Path:
    """The image with ground truth (green), the champion's boxes (blue, dashed) and the
    candidate's (orange), predictions at conf >= FOUND_CONF."""
    from matplotlib.image import imread

    pixels = imread(image)
    height, width = pixels.shape[:2]
    fig = Figure(figsize=(5, 5 * height / width), dpi=100)
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.imshow(pixels)
    ax.set_axis_off()
    layers = (
        (candidate.gt_boxes, "#2ca02c", "-", 2.0),
        (champion.pred_boxes[champion.conf >= FOUND_CONF], "#1f77b4", "--", 1.5),
        (candidate.pred_boxes[candidate.conf >= FOUND_CONF], "#ff7f0e", "-", 1.5),
    )
    for boxes, color, style, lw in layers:
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(
                _rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=style, linewidth=lw)
            )
    fig.suptitle(
        f"{flip.name}: candidate finds {flip.candidate_found}, champion {flip.champion_found} of {flip.objects}",
        fontsize=9,
    )
    fig.savefig(out)
    return out


def _rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(*args, **kwargs)


def gallery(evaluations: dict[str, str], out_dir: Path) -> tuple[list[Flip], list[Path]]:
    """Draw the flipped images from the kept evaluations; nothing without both."""
    keys = ("candidate-test", "champion-test", "test-images")
    if not all(evaluations.get(k) for k in keys):
        return [], []
    candidate = load_records(Path(evaluations["candidate-test"]))
    champion = {r.name: r for r in load_records(Path(evaluations["champion-test"]))}
    ours = {r.name: r for r in candidate}
    images = Path(evaluations["test-images"])
    found = flips(candidate, list(champion.values()))
    paths = []
    for i, f in enumerate(found):
        path = out_dir / f"flip_{i:02d}_{Path(f.name).stem}.png"
        paths.append(draw(f, ours[f.name], champion[f.name], images / f.name, path))
    return found, paths


def markdown(decision: dict[str, Any], found: Sequence[Flip] = (), *, session_url: str | None = None) -> str:
    """review.md's text, GitHub-flavoured."""
    outcome = str(decision.get("outcome", "")).upper()
    lines = [MARKER, f"## Promotion gate: {outcome}", "", f"**{outcome}** — {decision.get('reason', '')}", ""]
    if decision.get("candidate"):
        lines += [f"Candidate `{decision['candidate']}`, session `{decision.get('session')}`."]
    if session_url:
        lines += [f"MLflow session run: {session_url}"]
    lines += [""]
    criteria = decision.get("criteria") or []
    if criteria:
        lines += ["| criterion | threshold | value | outcome | note |", "|---|---|---|---|---|"]
        for c in criteria:
            cells = [c["name"], _num(c.get("threshold")), _num(c.get("value")), _outcome(c.get("passed"))]
            lines.append("| " + " | ".join([*cells, str(c.get("note", "")).replace("|", "\\|")]) + " |")
        lines += [""]
    deltas = decision.get("deltas") or []
    if deltas:
        lines += ["### Δ against production (candidate − champion, test split)", "", *delta_table(tuple(deltas)), ""]
    elif decision.get("champion") is None and decision.get("candidate"):
        lines += ["No version holds `production`: no Δ table, the absolute threshold decides.", ""]
    if found:
        lines += [
            f"### Images whose outcome flipped most (objects found at conf ≥ {FOUND_CONF}, IoU 0.5)",
            "",
            "| image | candidate | champion | change | objects |",
            "|---|---|---|---|---|",
            *(f"| {f.name} | {f.candidate_found} | {f.champion_found} | {f.change:+d} | {f.objects} |" for f in found),
            "",
            "Drawn in the report (green: ground truth, blue dashed: champion, orange: candidate).",
            "",
        ]
    if decision.get("noise"):
        lines += [f"Seed noise (val, between seeds): {decision['noise']}", ""]
    overall = next((d for d in deltas if d["kind"] == "overall" and d["low"] is not None), None)
    if overall:
        width = overall["high"] - overall["low"]
        lines += [f"Image noise (test, between images): the 95% interval of Δ is {width:.4f} wide.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _outcome(passed: bool | None) -> str:
    return "—" if passed is None else "pass" if passed else "**FAIL**"


def _num(value) -> str:
    if isinstance(value, float) and np.isfinite(value):
        return f"{value:.4f}"
    return "—" if value is None else str(value)
