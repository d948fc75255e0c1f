"""A run as the session reads it back from MLflow: what ranking and the report need."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str  # the test id, e.g. "imgsz416-lr0.01-seed42"
    config_id: str  # the id without the seed, e.g. "imgsz416-lr0.01" ("base" if nothing varies)
    status: str  # MLflow run status: "FINISHED", "FAILED", "RUNNING", ...
    start_time: int  # ms since epoch
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric
    reused_from: str | None = None  # the session that trained it, when this session reused it
    pruned: str | None = None  # where --prune stopped it (tag suite.pruned): it did not reach the last epoch
