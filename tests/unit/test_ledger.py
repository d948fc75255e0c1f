"""The session's ledger, fed reports as pytest sends them: completeness, the counts
line, and which runs were reused."""

from __future__ import annotations

from mlflow_cv_yolo.decide.decision import Completeness
from mlflow_cv_yolo.decide.ledger import Ledger


def report(ledger: Ledger, test: str, *outcomes: str, **kwargs) -> None:
    for phase, outcome in zip(("setup", "call", "teardown"), outcomes, strict=False):
        ledger.record(test, phase=phase, outcome=outcome, **kwargs)


def test_completeness_counts_finished_failed_and_not_run():
    ledger = Ledger(grid_size=8)
    ledger.collected(["a", "b", "c", "d"])
    report(ledger, "a", "passed", "passed", "passed", run_id="r1")
    report(ledger, "b", "passed", "failed", "passed", run_id="r2")
    report(ledger, "c", "passed", "passed", "passed", run_id="r3")  # its run did not end FINISHED
    statuses = {"r1": "FINISHED", "r2": "FAILED", "r3": "KILLED"}
    assert ledger.completeness(statuses, interrupted=False) == Completeness(
        selected=4, grid=8, finished=1, failed=2, interrupted=False
    )


def test_a_crashed_workers_test_is_failed_and_keeps_its_run_id():
    ledger = Ledger(grid_size=1)
    ledger.collected(["a"])
    ledger.record("a", phase="setup", outcome="passed", run_id="r1")
    test = ledger.record("a", phase="???", outcome="failed")
    assert (test.run_id, test.passed, test.failed) == ("r1", False, True)


def test_counts_and_reused_runs():
    ledger = Ledger(grid_size=3)
    ledger.collected(["a", "b", "c"])
    report(ledger, "a", "passed", "passed", run_id="r1", reused_from="s0")
    report(ledger, "b", "passed", "passed", run_id="r2", resumed_from="s0")
    report(ledger, "c", "passed", "passed", run_id="r3")
    assert ledger.counts() == "1 reused, 2 trained (1 resumed)"
    assert ledger.reused_runs() == {"r1": "s0"}
    assert [ledger.is_reused(t) for t in ("a", "b", "c", "unknown")] == [True, False, False, False]


def test_a_test_outside_the_selection_counts_nowhere():
    ledger = Ledger(grid_size=2)
    ledger.collected(["a"])
    report(ledger, "a", "passed", "passed", run_id="r1")
    report(ledger, "b", "passed", "passed", run_id="r2")
    assert ledger.counts() == "0 reused, 1 trained"
    assert ledger.completeness({"r1": "FINISHED", "r2": "FINISHED"}, interrupted=True) == Completeness(
        selected=1, grid=2, finished=1, failed=0, interrupted=True
    )


def test_a_pruned_test_is_complete_and_counted_another_skip_is_not():
    ledger = Ledger(grid_size=4)
    ledger.collected(["a", "b", "c", "d"])
    report(ledger, "a", "passed", "passed", run_id="r1")
    report(ledger, "b", "passed", "skipped", run_id="r2", pruned="rung=4 value=0 cut=0.2 reached=3 eta=3")
    report(ledger, "c", "passed", "skipped", run_id="r3")  # skipped for another reason
    report(ledger, "d", "passed", "passed", run_id="r4", resumed_from="s0", was_pruned="rung=4 value=0 cut=0.2")
    statuses = dict.fromkeys(("r1", "r2", "r3", "r4"), "FINISHED")
    assert ledger.completeness(statuses, interrupted=False) == Completeness(
        selected=4, grid=4, finished=3, failed=0, interrupted=False
    )
    assert ledger.counts() == "0 reused, 4 trained (1 pruned run continued), 1 pruned"
