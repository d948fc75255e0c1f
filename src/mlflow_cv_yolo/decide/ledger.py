"""The session's ledger of its tests: what pytest reported for each selected test
(phases, the run it recorded, reused or resumed), and what that says about the
session — how complete it was, what its tests did with their runs. Pure: the session
feeds it reports and run statuses read back from MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_cv_yolo.decide.decision import Completeness


@dataclass
class TestRecord:
    phases: dict[str, str] = field(default_factory=dict)  # "setup"/"call"/"teardown"/"???" -> outcome
    run_id: str | None = None
    reused_from: str | None = None  # its run is a FINISHED run of that session (see runs/reuse.py)
    resumed_from: str | None = None  # its run continued one that session left unfinished
    pruned: str | None = None  # --prune stopped its run at a rung (the run's suite.pruned): skipped, complete
    was_pruned: str | None = None  # its run continued one that --prune had stopped

    @property
    def passed(self) -> bool:
        return self.phases.get("call") == "passed" and "failed" not in self.phases.values()

    @property
    def complete(self) -> bool:
        """Passed, or skipped because --prune stopped its run (which it checked first)."""
        call = self.phases.get("call")
        return (call == "passed" or (call == "skipped" and bool(self.pruned))) and not self.failed

    @property
    def failed(self) -> bool:
        return "failed" in self.phases.values()


class Ledger:
    def __init__(self, grid_size: int):
        self.grid_size = grid_size
        self.selected: list[str] = []
        self.tests: dict[str, TestRecord] = {}

    def collected(self, test_ids: list[str]) -> None:
        self.selected = list(test_ids)

    def record(
        self,
        test_id: str,
        *,
        phase: str,
        outcome: str,
        run_id: str | None = None,
        reused_from: str | None = None,
        resumed_from: str | None = None,
        pruned: str | None = None,
        was_pruned: str | None = None,
    ) -> TestRecord:
        test = self.tests.setdefault(test_id, TestRecord())
        test.phases[phase] = outcome
        test.run_id = run_id or test.run_id
        test.reused_from = reused_from or test.reused_from
        test.resumed_from = resumed_from or test.resumed_from
        test.pruned = pruned or test.pruned
        test.was_pruned = was_pruned or test.was_pruned
        return test

    def is_reused(self, test_id: str) -> bool:
        return bool(test_id in self.tests and self.tests[test_id].reused_from)

    def reused_runs(self) -> dict[str, str]:
        """Run id -> the session that trained it, for the runs the tests reused."""
        return {t.run_id: t.reused_from for t in self.tests.values() if t.reused_from and t.run_id}

    def completeness(
        self, statuses: dict[str, str], *, interrupted: bool, by_test: dict[str, str] | None = None
    ) -> Completeness:
        """`statuses`: each run's MLflow status, by run id; `by_test`: by test id, for a
        test interrupted before it reported its run. A test whose run --prune stopped
        counts as finished: its configuration got the epochs it earned."""
        tests = {t: self.tests.get(t, TestRecord()) for t in self.selected}
        finished = sum(1 for t in tests.values() if t.complete and statuses.get(t.run_id) == "FINISHED")
        failed = sum(1 for t in tests.values() if t.failed or (t.complete and statuses.get(t.run_id) != "FINISHED"))
        killed = sum(
            1
            for name, t in tests.items()
            if not t.failed and not t.complete
            and (statuses.get(t.run_id) if t.run_id else (by_test or {}).get(name)) == "KILLED"
        )  # fmt: skip
        return Completeness(
            selected=len(self.selected),
            grid=self.grid_size,
            finished=finished,
            failed=failed,
            interrupted=interrupted,
            killed=killed,
        )

    def counts(self) -> str:
        """`6 reused, 2 trained (1 resumed, 2 pruned runs continued), 3 pruned`: what the
        selected tests did with their runs."""
        tests = [self.tests[t] for t in self.selected if t in self.tests and self.tests[t].run_id]
        reused = sum(1 for t in tests if t.reused_from)
        resumed = sum(1 for t in tests if t.resumed_from and not t.reused_from and not t.was_pruned)
        continued = sum(1 for t in tests if t.was_pruned and not t.reused_from)
        pruned = sum(1 for t in tests if t.pruned)
        notes = [f"{resumed} resumed"] if resumed else []
        notes += [f"{continued} pruned run{'s' if continued != 1 else ''} continued"] if continued else []
        text = f"{reused} reused, {len(tests) - reused} trained" + (f" ({', '.join(notes)})" if notes else "")
        return text + (f", {pruned} pruned" if pruned else "")
