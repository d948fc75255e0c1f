"""A run ultralytics stops early (patience): a grid key, a reason in words, tags
that say so, and the epochs its check then expects (pure logic, a stand-in trainer)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mlflow_cv_yolo.runs.training_run import TAG_LAST_EPOCH, TAG_STOPPED_EARLY, early_stop_tags, expected_epochs
from mlflow_cv_yolo.train.grid import GridError, expand, load_grid
from mlflow_cv_yolo.train.training import TrainResult, stop_reason

GRID = Path(__file__).resolve().parents[2] / "experiments" / "grid.yaml"
BASE = [("imgsz", ["64"]), ("lr0", ["0.01"]), ("seed", ["1"])]


def trainer(epoch: int, epochs: int, best: int, patience: float, time: float | None = None):
    """What stop_reason reads of ultralytics' trainer after its loop (epoch: 0-based)."""
    stopper = SimpleNamespace(best_epoch=best, patience=patience)
    return SimpleNamespace(epoch=epoch, epochs=epochs, stopper=stopper, args=SimpleNamespace(time=time))


def test_patience_is_an_optional_grid_key_and_an_axis():
    (run,) = expand(load_grid(GRID, BASE))
    assert "patience" not in run.values  # not given: ultralytics' default, not recorded
    runs = expand(load_grid(GRID, [*BASE, ("patience", ["1", "50"])]))
    assert [(r.id, r.values["patience"]) for r in runs] == [("patience1", 1), ("patience50", 50)]
    with pytest.raises(GridError, match=r"^patience=-1: must be an integer >= 0 \(0: never stop early\)$"):
        load_grid(GRID, [*BASE, ("patience", ["-1"])])


def test_the_reason_names_the_patience_and_the_best_epoch():
    assert stop_reason(trainer(297, 300, best=198, patience=100)) == (
        "no improvement for 100 epochs (patience 100); best epoch 198"
    )
    assert stop_reason(trainer(9, 300, best=10, patience=float("inf"), time=0.01)) == "time limit of 0.01 h reached"
    assert stop_reason(trainer(299, 300, best=198, patience=100)) is None  # every epoch ran


def test_an_early_stop_is_tagged_and_checked_against_the_epochs_that_ran():
    result = TrainResult(Path("s"), Path("b"), Path("l"), {}, last_epoch=298, stopped_early="no improvement")
    tags = early_stop_tags(result)
    assert tags == {TAG_LAST_EPOCH: "298", TAG_STOPPED_EARLY: "no improvement"}
    assert expected_epochs(300, tags) == 298
    assert early_stop_tags(TrainResult(Path("s"), Path("b"), Path("l"), {}, last_epoch=300)) == {}
    assert expected_epochs(300, {}) == 300
    assert expected_epochs(300, {TAG_LAST_EPOCH: "301"}) == 300  # never more than the grid asked for
