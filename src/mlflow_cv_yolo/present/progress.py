"""Each run's state while a session trains, for the terminal: queued, epoch k of N with
the last mAP, finished, failed. Read from what the workers already report — their
runs' per-epoch metrics in MLflow — so it works the same under xdist, without it,
or with training elsewhere.

On a terminal the state is one line kept at the end of pytest's current line and
redrawn in place; in a log (CI) it is a plain line every `interval` seconds when
something changed."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Protocol

from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.runs import tracking


class Terminal(Protocol):
    """What is read of pytest's TerminalWriter to fit the line in."""

    fullwidth: int
    width_of_current_line: int

    def flush(self) -> None: ...


def states(
    client: MlflowClient, experiment_id: str, session_id: str, tests: list[str], epochs: dict[str, int]
) -> dict[str, str]:
    """test id -> its state in words."""
    query = f"tags.`{tracking.TAG_SESSION}` = '{session_id}' and tags.`{tracking.TAG_KIND}` = 'grid'"
    runs = {r.data.tags.get(tracking.TAG_TEST): r for r in client.search_runs([experiment_id], query, max_results=1000)}
    out = {}
    for test in tests:
        run = runs.get(test)
        if run is None:
            out[test] = "queued"
        elif run.info.status == "RUNNING":
            history = client.get_metric_history(run.info.run_id, "mAP50-95")
            last = max(history, key=lambda m: m.step) if history else None
            out[test] = (
                f"epoch {last.step}/{epochs.get(test, '?')} mAP {last.value:.3f}"
                if last
                else f"epoch 0/{epochs.get(test, '?')}"
            )
        else:
            out[test] = {"FINISHED": "finished"}.get(run.info.status, "failed")
    return out


def summary(state: dict[str, str]) -> str:
    """`3 finished, 1 failed, 2 queued | imgsz320-lr0.01-seed1 epoch 2/3 mAP 0.012 | ...`"""
    counts = {}
    for value in state.values():
        key = value if value in ("finished", "reused", "failed", "queued") else "training"
        counts[key] = counts.get(key, 0) + 1
    head = ", ".join(
        f"{counts[k]} {k}" for k in ("finished", "reused", "failed", "training", "queued") if counts.get(k)
    )
    busy = [f"{test} {value}" for test, value in state.items() if value.startswith("epoch")]
    return " | ".join([head, *busy])


class Progress:
    """A daemon thread polling MLflow; `hide()`/`show()` bracket pytest's own writes
    on a terminal so that the two never mix on one line."""

    def __init__(self, poll: Callable[[], dict[str, str]], *, fd: int, terminal: Terminal, tty: bool, interval: float):
        self.poll = poll
        self.fd = os.dup(fd)  # the terminal itself: output capture during a test does not reach it
        self.terminal = terminal
        self.tty = tty  # False: a log, where lines are only ever added
        self.interval = interval
        self._lock = threading.RLock()
        self._shown = 0  # characters of ours at the end of the current line
        self._width = 0  # pytest's current line when we last wrote a line of ours (logs)
        self._last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self.hide()
            self._stop.set()
            os.close(self.fd)

    def _write(self, text: str) -> None:
        if self._stop.is_set():
            return
        self.terminal.flush()  # pytest's pending text first, or ours lands in the middle of it
        os.write(self.fd, text.encode("utf-8", "replace"))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = summary(self.poll())
            except Exception:  # a slow or restarting server: skip this round
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                if not self.tty:
                    if text != self._last:
                        # A new line only where pytest wrote since our last one (its dots).
                        width = self.terminal.width_of_current_line
                        start = "\n" if width and width != self._width else ""
                        self._write(f"{start}[progress] {text}\n")
                        self._width = width
                else:
                    self.hide()
                    self._show(text)
                self._last = text

    def _show(self, text: str) -> None:
        room = self.terminal.fullwidth - self.terminal.width_of_current_line - 3
        if room < 10:
            return
        text = f"  {text}"[:room]
        self._write(text)
        self._shown = len(text)

    def hide(self) -> None:
        """Take our text off the line (before pytest writes)."""
        with self._lock:
            if self._shown:
                self._write("\b" * self._shown + "\x1b[K")
                self._shown = 0

    def show(self) -> None:
        """Put the last state back (after pytest wrote)."""
        with self._lock:
            if self.tty and self._last and not self._stop.is_set():
                self._show(self._last)
