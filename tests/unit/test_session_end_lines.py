"""Lines of the session's end in the terminal that need no decision (pure logic)."""

from __future__ import annotations

from pathlib import Path

from mlflow_cv_yolo.decide.decision import Completeness
from mlflow_cv_yolo.decide.ledger import Ledger
from mlflow_cv_yolo.present.terminal import reopen_line


def test_an_interrupted_session_counts_killed_runs_apart_from_those_never_run():
    done = Completeness(selected=4, grid=8, finished=1, failed=1, interrupted=True, killed=1)
    assert (done.not_run, done.note) == (1, "1 of 4 runs finished; 1 failed; 1 killed; 1 not run; interrupted")
    assert Completeness(selected=2, grid=2, finished=0, failed=0, interrupted=True, killed=2).note == (
        "0 of 2 runs finished; 2 killed; interrupted"
    )


def test_the_links_say_how_to_reopen_a_server_that_stops_with_the_session():
    assert reopen_line("local", Path("/w/.stack"), fresh=False) == (
        "mlflow stops with this session: `python -m mlflow_cv_yolo ui --stack local --stack-dir /w/.stack` "
        "(or `cv-yolo ui ...`) reopens these links",
        {},
    )
    assert reopen_line("embedded", Path("/w/s"), fresh=True) == (
        "the links die with this session's throwaway stack (--fresh-stack keeps nothing)",
        {},
    )
    assert reopen_line("external", Path("/w/.stack"), fresh=False) is None  # it outlives the session


def test_the_ledger_counts_a_test_whose_run_an_interruption_killed():
    ledger = Ledger(4)
    ledger.collected(["a", "b", "c", "d"])
    ledger.record("a", phase="call", outcome="passed", run_id="ra")
    ledger.record("b", phase="call", outcome="failed", run_id="rb")
    ledger.record("c", phase="setup", outcome="passed")  # interrupted mid-call: its run never reported
    statuses = {"ra": "FINISHED", "rb": "FAILED"}
    done = ledger.completeness(statuses, interrupted=True, by_test={"a": "FINISHED", "b": "FAILED", "c": "KILLED"})
    assert done.note == "1 of 4 runs finished; 1 failed; 1 killed; 1 not run; interrupted"
