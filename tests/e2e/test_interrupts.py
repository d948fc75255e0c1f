"""Ctrl-C is not lost when Python swallows its KeyboardInterrupt in a callback."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import REPO

from mlflow_cv_yolo.train import interrupts, training
from mlflow_cv_yolo.train.grid import expand, load_grid


@pytest.fixture
def handlers(monkeypatch):
    """interrupts.install() for one test: a fresh record, the old handlers put back."""
    monkeypatch.setattr(interrupts, "_requested", threading.Event())
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class _SignalsItselfWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, inside __del__, where Python ignores what it raises


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_swallowed_in_a_finaliser_is_still_raised_by_check(handlers):
    interrupts.install()
    interrupts.check()  # nothing happened yet
    _SignalsItselfWhenCollected()  # prints "Exception ignored in ... KeyboardInterrupt"
    with pytest.raises(KeyboardInterrupt, match="lost in a callback"):
        interrupts.check()


def test_sigterm_becomes_keyboard_interrupt(handlers):
    interrupts.install()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)


def test_an_ignored_sigint_stays_ignored(handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_training_stops_at_the_next_batch_after_a_lost_ctrl_c(handlers, tmp_path, data_yaml):
    """The record set by an earlier, swallowed signal stops real training after its
    first batch, before any epoch is written."""
    run = expand(
        load_grid(
            REPO / "experiments" / "grid.yaml",
            [("epochs", ["5"]), ("imgsz", ["64"]), ("lr0", ["0.01"]), ("seed", ["1"])],
        )
    )[0]
    interrupts._requested.set()
    with pytest.raises(KeyboardInterrupt, match="lost in a callback"):
        training.train(run, data=data_yaml, model="yolov8n.yaml", project=tmp_path, threads=1)
    assert not list(tmp_path.rglob("results.csv"))
