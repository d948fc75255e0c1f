"""Report inputs made by hand: run records, metric histories and a decision, for the
report's unit test and its browser test."""

from __future__ import annotations

from pathlib import Path

from mlflow_cv_yolo.decide.ranking import RunRecord
from mlflow_cv_yolo.present.report import ReportFiles, write_report

LOSSES = [f"{split}/{loss}" for split in ("train", "val") for loss in ("box_loss", "cls_loss", "dfl_loss")]


def record(
    name: str, config_id: str, best: float | None, *, status: str = "FINISHED", start: int = 0, **params: str
) -> RunRecord:
    metrics = (
        {}
        if best is None
        else {"best/mAP50-95": best, "best/mAP50": best + 0.2, "best/precision": 0.6, "best/recall": 0.5}
    )
    return RunRecord(
        run_id=f"rid{start}",
        name=name,
        config_id=config_id,
        status=status,
        start_time=start,
        params={"epochs": "3", **params},
        metrics=metrics,
    )


def history(final: float, epochs: int) -> dict[str, list[tuple[int, float]]]:
    steps = range(1, epochs + 1)
    curves = {"mAP50-95": [(e, final * e / epochs) for e in steps]}
    curves.update({name: [(e, 2.0 - 0.3 * e + 0.1 * i) for e in steps] for i, name in enumerate(LOSSES)})
    return curves


DECISION = {
    "outcome": "promoted",
    "reason": "candidate beats the threshold by 0.260",
    "candidate": "imgsz416-seed42",
    "criteria": [
        {"name": "min_map", "threshold": 0.25, "value": 0.51, "passed": True},
        {"name": "min_improvement", "threshold": 0.0, "value": None, "passed": None},
    ],
    "registered_version": 3,
    "champion": {"version": None},
}


def url(run: RunRecord) -> str:
    return f"http://127.0.0.1:5000/#/experiments/1/runs/{run.run_id}"


def write(tmp_path: Path, runs: list[RunRecord], histories: dict, decision: dict = DECISION) -> ReportFiles:
    return write_report(
        tmp_path / "reports" / "s1", session_id="s1", runs=runs, histories=histories, decision=decision, run_url=url
    )
