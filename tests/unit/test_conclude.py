"""The conclusion's order, with a fake client and the decision's steps replaced: the
candidate's version is registered, the records written and logged, and the alias moves
last; whatever fails, the session run ends and the alias stays where it was."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from mlflow_cv_yolo import conclude as conclude_module
from mlflow_cv_yolo.decide import promotion, registry
from mlflow_cv_yolo.decide.decision import Decision
from mlflow_cv_yolo.decide.ledger import Ledger
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.runs.record import RunRecord

RUN = RunRecord("r1", "imgsz64", "imgsz64", "FINISHED", 1, {"imgsz": "64"}, {"best/mAP50-95": 0.4})


class FakeClient:
    def __init__(self, steps: list[str]):
        self.steps = steps

    def log_artifact(self, run_id, path, folder):
        self.steps.append(f"log {folder}")

    def set_terminated(self, run_id, status):
        self.steps.append(f"end {run_id} {status}")


@pytest.fixture
def steps(monkeypatch, tmp_path):
    steps: list[str] = []
    decision = Decision("promoted", "passes", "s1", candidate="imgsz64", candidate_run_id="r1")
    fake = SimpleNamespace(
        MlflowClient=lambda uri: FakeClient(steps),
        end_running=lambda *a, **k: steps.append("end running"),
        session_runs=lambda *a: [RUN],
        reused_runs=lambda *a: [],
        histories=lambda *a: {},
        run_url=lambda *a: "http://x/run",
        runs_view_url=lambda *a, **k: "http://x/runs",
        TAG_SESSION="suite.session",
    )
    monkeypatch.setattr(conclude_module, "MlflowClient", fake.MlflowClient)
    monkeypatch.setattr(conclude_module, "tracking", fake)
    monkeypatch.setattr(promotion, "decide", lambda *a, **k: decision)
    monkeypatch.setattr(
        registry,
        "register",
        lambda client, d, **k: steps.append("register") or dataclasses.replace(d, version="3", alias=k["alias"]),
    )
    monkeypatch.setattr(registry, "move_alias", lambda client, d: steps.append(f"alias v{d.version} @{d.alias}"))
    return steps


def settings(tmp_path):
    return SimpleNamespace(
        promote=True, criteria=None, registered_model="m", promote_to="staging", reports_dir=tmp_path / "reports"
    )


INFO = SessionInfo(
    session_id="s1", experiment="e", experiment_id="1", tracking_uri="http://127.0.0.1:1", stack_kind="local",
    data="d.yaml", model_requested="m.pt", model_used="m.pt", pretrained=True, model_note="", workdir="w",
    parent_run_id="p1",
)  # fmt: skip


def ledger() -> Ledger:
    book = Ledger(1)
    book.collected(["imgsz64"])
    for phase in ("setup", "call", "teardown"):
        book.record("imgsz64", phase=phase, outcome="passed", run_id="r1")
    return book


def test_the_alias_moves_after_the_records_are_written_and_logged(steps, tmp_path):
    conclusion = conclude_module.conclude(settings(tmp_path), INFO, ledger(), interrupted=False)
    assert conclusion.decision.outcome == "promoted" and conclusion.record.is_file()
    logs = [s for s in steps if s.startswith("log ")]
    assert steps == ["end running", "register", *logs, "alias v3 @staging", "end p1 FINISHED"]
    assert logs[:2] == ["log decision", "log decision"] and logs[-1] == "log report"


def test_an_unwritable_report_leaves_the_alias_and_ends_the_session_run(steps, tmp_path, monkeypatch):
    def unwritable(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(conclude_module.report, "write_report", unwritable)
    with pytest.raises(OSError, match="Read-only file system"):
        conclude_module.conclude(settings(tmp_path), INFO, ledger(), interrupted=False)
    assert steps == ["end running", "register", "end p1 FAILED"]
