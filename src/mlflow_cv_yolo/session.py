"""One experiment session, from its stack's start to its promotion decision.

Like pytest-xdist's DSession, this object owns a session's life on the controller (or
the only process) and routes it; others do the work: `startup.Startup` starts what the
session needs, `decide.ledger.Ledger` keeps the tests' outcomes, `conclude.conclude`
decides and promotes, `present.terminal` draws it. The pytest plugin
(fixtures/controller.py) calls one method a hook, in this order:

1. `start()`      check every input, start the stack and resolve the weights, put the
                  data on the stack, open the session's parent run -> `SessionInfo`,
                  what each worker gets (xdist's workerinput)
2. `collected()`  the tests the session selected (after -k)
3. `record()`     each test's outcome, as pytest reports it (also a crashed worker's)
4. `finish()`     was the session complete? decide, promote, report -> `Conclusion`
5. `stop()`       the health monitor, then Ray and the stack
"""

from __future__ import annotations

import secrets
import time
import traceback
from collections.abc import Callable

from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.conclude import conclude
from mlflow_cv_yolo.data import provenance
from mlflow_cv_yolo.decide.conclusion import Conclusion
from mlflow_cv_yolo.decide.ledger import Ledger
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.present import progress, terminal
from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.settings import Settings
from mlflow_cv_yolo.startup import Startup
from mlflow_cv_yolo.train import devices, interrupts
from mlflow_cv_yolo.train.grid import RunConfig


class Session:
    def __init__(
        self,
        settings: Settings,
        grid: list[RunConfig],
        log: Callable[[str], None] = print,
        *,
        selected: int | None = None,
    ):
        """`selected`: how many of the grid's tests -k, -m or node ids leave (all by default)."""
        self.settings = settings
        self.grid = grid
        self.log = log
        self.session_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        self.startup = Startup(
            settings, grid, self.session_id, log=log, on_stack_failure=self._stack_failed, selected=selected
        )
        self.ledger = Ledger(len(grid))
        self.info: SessionInfo | None = None
        self.stack_failure: str | None = None

    @property
    def workers(self) -> int:
        """xdist workers to start; 0: the tests run in this process (all reused)."""
        return self.startup.workers

    # -- 1. start ---------------------------------------------------------------------

    def start(self) -> SessionInfo:
        """Raises InputError (nothing started) or StackError (what started is stopped)."""
        self.info = self.startup.run()
        return self.info

    def _stack_failed(self, message: str) -> None:
        """From the monitor's thread: the stack is gone for good; stop the session now
        rather than leave every client retrying for many minutes."""
        self.stack_failure = message
        interrupts.interrupt_main("the tracking stack failed")

    def worker_input(self) -> dict:
        return self.info.to_dict()

    def header_lines(self) -> list[str]:
        s, up = self.settings, self.startup
        asked = s.workers if up.workers else None  # none started: the reuse line says why
        devices_line = devices.describe(
            s.device, up.found, up.devices, max(1, up.workers), devices.cpu_count(), workers_asked=asked
        )
        source = provenance.source_words(self.info.data)
        return terminal.header_lines(
            self.info,
            up.stack_info,
            data_source=(source.text, source.loud) if source else None,
            ready_in=up.ready_in,
            state=up.state_shown,
            ray=up.ray.describe() if up.ray is not None else None,
            devices_line=devices_line,
        )

    # -- 2. and 3. the tests ----------------------------------------------------------

    def collected(self, test_ids: list[str]) -> None:
        self.ledger.collected(test_ids)

    @property
    def selected(self) -> list[str]:
        return self.ledger.selected

    def reuse_line(self) -> str | None:
        """How many selected tests a finished run answers; None with --rerun."""
        if self.settings.rerun:
            return None
        selected = self.ledger.selected
        reusable = sum(1 for test in selected if test in self.info.reusable)
        continued = sum(1 for test in selected if test in self.info.continued)
        return terminal.reuse_line(reusable, len(selected), workers=self.workers, continued=continued)

    def run_states(self) -> dict[str, str]:
        """Each selected test's state in words (queued, epoch k/N mAP x, finished, failed)."""
        epochs = {config.id: config.epochs for config in self.grid}
        client = MlflowClient(self.info.tracking_uri)
        states = progress.states(client, self.info.experiment_id, self.session_id, self.ledger.selected, epochs)
        return {test: "reused" if self.ledger.is_reused(test) else state for test, state in states.items()}

    def record(
        self,
        test_id: str,
        *,
        phase: str,
        outcome: str,
        run_id: str | None = None,
        crash: str | None = None,
        reused_from: str | None = None,
        resumed_from: str | None = None,
        pruned: str | None = None,
        was_pruned: str | None = None,
    ) -> None:
        """One report of one test. A crashed worker's test ("???" phase) and a test that
        failed after its run FINISHED must not leave that run looking usable (a reused
        run is another session's result, and stays as it is)."""
        test = self.ledger.record(
            test_id,
            phase=phase,
            outcome=outcome,
            run_id=run_id,
            reused_from=reused_from,
            resumed_from=resumed_from,
            pruned=pruned,
            was_pruned=was_pruned,
        )
        if outcome != "failed" or self.info is None or test.reused_from:
            return
        client = MlflowClient(self.info.tracking_uri)
        if crash is not None:
            tracking.end_running(
                client,
                self.info.experiment_id,
                self.session_id,
                status="FAILED",
                reason=crash,
                test_id=test_id,
                kinds=("grid",),
            )
        elif test.run_id and client.get_run(test.run_id).info.status == "FINISHED":
            client.set_tag(test.run_id, tracking.TAG_END, f"its test failed in {phase}: the run is not a result")
            client.set_terminated(test.run_id, "FAILED")

    # -- 4. the end -------------------------------------------------------------------

    def finish(self, *, interrupted: bool) -> Conclusion:
        if self.info is None:
            return Conclusion()
        if self.stack_failure:
            return Conclusion(stack_failure=self.stack_failure)
        try:
            return conclude(self.settings, self.info, self.ledger, interrupted=interrupted)
        except Exception:  # the gate must fail loudly, not pass
            return Conclusion(error=traceback.format_exc())

    # -- 5. stop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Idempotent: called by pytest's cleanup, and by atexit as a backstop. After a
        stack failure the folder's claim stays, saying why: the next session on it ends
        this session's RUNNING runs, which nobody could reach now."""
        self.startup.stop(left_unfinished=self.stack_failure)
