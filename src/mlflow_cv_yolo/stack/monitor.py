"""Watching a started stack: every few seconds each service is asked whether it is
alive; a dead one is restarted on the same port and data while MLflow's clients
retry (base.CLIENT_RETRY_ENV). A restart that fails is reported once and handed
to the session, which then stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .base import Service, Stack


def _one_line(exc: Exception) -> str:
    """One line: the error's first, and the last line of the log it quotes (if any)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0].removesuffix(":")
    return f"{head}: {lines[-1]}" if len(lines) > 1 else head


class HealthMonitor:
    """A daemon thread over `stack.services`; `start()` after the stack started,
    `stop()` before it stops. Logs one line when a service is found dead, one when
    it is back; on a failed restart logs one line and calls `on_failure(line)` once,
    then watches no more."""

    def __init__(
        self, stack: Stack, log: Callable[[str], None], on_failure: Callable[[str], None], interval: float = 3.0
    ):
        self.stack = stack
        self.log = log
        self.on_failure = on_failure
        self.interval = interval
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HealthMonitor:
        self._thread = threading.Thread(target=self._watch, name="stack-health", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 150.0) -> None:
        """Wait for a restart under way (MLflow's can take a while), not for the next round."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> HealthMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
            if self.failed:
                return

    def check(self) -> None:
        """One round over every service."""
        for service in self.stack.services:
            if self._stop.is_set() or self.failed:
                return
            if not self._alive(service):
                self._restart(service)

    @staticmethod
    def _alive(service: Service) -> bool:
        try:
            return service.alive()
        except Exception:  # a check that cannot tell counts as dead: restarting is safe
            return False

    def _restart(self, service: Service) -> None:
        self.log(f"stack: {service.name} on {service.address} died; restarting it")
        started = time.monotonic()
        try:
            service.restart()
        except Exception as exc:
            self.failed = f"stack: {service.name} on {service.address} could not be restarted: {_one_line(exc)}"
            self.log(self.failed)
            self.on_failure(self.failed)
            return
        self.log(f"stack: {service.name} back after {time.monotonic() - started:.1f} s")
