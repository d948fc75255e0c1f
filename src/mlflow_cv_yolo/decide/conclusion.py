"""What a session concluded: its decision, report and links, and the exit status they give."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow_cv_yolo.decide.decision import Decision

# Exit status of a session whose tracking stack could not start, or died and could
# not be restarted (pytest's own statuses are 0-5).
STACK_FAILED = 6


@dataclass(frozen=True)
class Conclusion:
    """What `finish()` found; the plugin prints it and sets the exit status from it."""

    decision: Decision | None = None
    report: Path | None = None
    record: Path | None = None
    links: dict[str, str] = field(default_factory=dict)  # name -> MLflow UI URL
    counts: str = ""  # "6 reused, 2 trained (1 resumed)"
    reused: tuple[tuple[str, str, str], ...] = ()  # (test id, the session that trained it, its run's URL)
    error: str | None = None  # the conclusion itself crashed (a traceback)
    stack_failure: str | None = None  # the stack died mid-session and could not be restarted

    def exit_status(self, pytest_status: int) -> int:
        if self.stack_failure:
            return STACK_FAILED
        if pytest_status != 0:
            return pytest_status
        return 1 if self.error or (self.decision is not None and self.decision.blocks_the_gate) else 0
