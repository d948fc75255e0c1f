"""Where a test's training runs: one small strategy object, so that the test does not
know which. `LocalExecutor` trains in the test's own process (an xdist worker, or
the only process)."""

from __future__ import annotations

from .experiment import TrainRequest, train_into_run


class LocalExecutor:
    def run(self, request: TrainRequest) -> None:
        train_into_run(request)
