"""The Session object in-process, as xdist tests its DSession with a MockNode: the
routing that needs no stack (collection, reports, the reuse line, an early finish)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from test_conclude import INFO

from mlflow_cv_yolo.decide.conclusion import Conclusion
from mlflow_cv_yolo.session import Session
from mlflow_cv_yolo.train.grid import RunConfig

GRID = [RunConfig(f"imgsz{s}", {"imgsz": s, "epochs": 1}, f"imgsz{s}") for s in (64, 96, 128)]


def session(rerun: bool = False) -> Session:
    made = Session(SimpleNamespace(workers=2, rerun=rerun), GRID, log=lambda line: None)
    made.info = dataclasses.replace(INFO, reusable={"imgsz64": ["r1", "s0"], "imgsz96": ["r2", "s0"]})
    return made


def test_the_reuse_line_counts_what_k_selected():
    routed = session()
    routed.collected(["imgsz64", "imgsz128"])
    assert routed.selected == ["imgsz64", "imgsz128"]
    assert routed.reuse_line() == (
        "reuse: 1 of 2 configurations have a finished run with the same key (--rerun trains them again)"
    )
    assert session(rerun=True).reuse_line() is None


def test_passed_reports_reach_the_ledger_without_a_server_call():
    routed = session()
    routed.collected(["imgsz64"])
    for phase in ("setup", "call", "teardown"):
        routed.record("imgsz64", phase=phase, outcome="passed", run_id="r9", reused_from="s0")
    assert routed.ledger.counts() == "1 reused, 0 trained"
    assert routed.ledger.is_reused("imgsz64")


def test_a_session_that_never_started_concludes_nothing():
    unstarted = Session(SimpleNamespace(workers=2, rerun=False), GRID, log=lambda line: None)
    assert unstarted.finish(interrupted=True) == Conclusion()
