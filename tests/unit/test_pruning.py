"""The successive-halving rule: rungs, and continue or stop at one."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlflow_cv_yolo.errors import InputError
from mlflow_cv_yolo.preflight import check_pruning
from mlflow_cv_yolo.runs.pruner import TAG_PRUNED, Pruned, Pruner, chain
from mlflow_cv_yolo.settings import epochs_count, eta
from mlflow_cv_yolo.train.grid import expand, load_grid
from mlflow_cv_yolo.train.pruning import Pruning, Verdict, decide, default_min_epochs, rungs

NAN = math.nan
GRID = Path(__file__).resolve().parents[2] / "experiments" / "grid.yaml"


def test_rungs_grow_by_eta_and_stop_below_the_last_epoch():
    assert rungs(1, 3, 30) == (1, 3, 9, 27)
    assert rungs(4, 3, 36) == (4, 12)  # 36 itself is the end of training
    assert rungs(4, 3, 37) == (4, 12, 36)
    assert rungs(2, 2, 16) == (2, 4, 8)


def test_no_rung_when_the_first_is_not_before_the_end():
    assert rungs(4, 3, 4) == ()
    assert rungs(10, 3, 3) == ()


@pytest.mark.parametrize("min_epochs, eta", [(0, 3), (2, 1)])
def test_rungs_refuse_a_first_rung_below_1_or_eta_below_2(min_epochs, eta):
    with pytest.raises(ValueError, match=f"min_epochs={min_epochs}, eta={eta}"):
        rungs(min_epochs, eta, 10)


def test_default_first_rung_is_an_eighth_never_inside_warm_up():
    assert [default_min_epochs(e) for e in (1, 10, 32, 33, 100)] == [4, 4, 4, 5, 13]


def test_default_warm_up_is_ultralytics_own():
    from ultralytics.cfg import DEFAULT_CFG

    from mlflow_cv_yolo.train.pruning import WARMUP_EPOCHS

    assert DEFAULT_CFG.warmup_epochs == WARMUP_EPOCHS
    from ultralytics.engine.trainer import BaseTrainer

    # Epochs, not iterations: warm-up ends after WARMUP_EPOCHS whatever the batches an epoch.
    trainer = SimpleNamespace(args=SimpleNamespace(warmup_epochs=WARMUP_EPOCHS), epochs=12)
    assert [BaseTrainer._get_warmup_iterations(trainer, nb) for nb in (5, 12)] == [15, 36]


def test_fewer_than_eta_runs_at_the_rung_all_continue():
    verdict = decide(0.0, [0.9], eta=3)
    assert (verdict.go_on, verdict.reached, math.isnan(verdict.cut)) == (True, 2, True)


def test_top_third_continues_the_rest_stops():
    others = [0.5, 0.4, 0.3, 0.2, 0.1]
    # 6 runs at the rung, eta 3: the best 2 continue, the cut is the 2nd best.
    assert decide(0.45, others, eta=3) == Verdict(True, 0.45, 0.45, 6)
    assert decide(0.6, others, eta=3) == Verdict(True, 0.6, 0.5, 6)
    assert decide(0.35, others, eta=3) == Verdict(False, 0.35, 0.4, 6)


def test_a_tie_at_the_cut_continues():
    assert decide(0.4, [0.5, 0.4, 0.3, 0.2, 0.1], eta=3) == Verdict(True, 0.4, 0.4, 6)
    assert decide(0.3, [0.3, 0.3], eta=3) == Verdict(True, 0.3, 0.3, 3)


def test_exactly_eta_runs_keep_the_best_one():
    assert decide(0.2, [0.3, 0.1], eta=3) == Verdict(False, 0.2, 0.3, 3)
    assert decide(0.3, [0.2, 0.1], eta=3) == Verdict(True, 0.3, 0.3, 3)


def test_a_nan_value_is_the_worst():
    verdict = decide(NAN, [0.0, 0.0], eta=3)
    assert (verdict.go_on, verdict.cut, verdict.reached) == (False, 0.0, 3)


def test_a_nan_value_continues_while_there_is_no_cut():
    verdict = decide(NAN, [0.1], eta=3)
    assert (verdict.go_on, verdict.reached) == (True, 2)


def test_nan_among_the_others_is_ignored():
    # Only 0.5 and this run count: fewer than eta, so it continues.
    verdict = decide(0.1, [NAN, 0.5, NAN], eta=3)
    assert (verdict.go_on, verdict.reached) == (True, 2)
    assert decide(0.1, [NAN, 0.5, 0.4], eta=3) == Verdict(False, 0.1, 0.5, 3)


def test_pruning_off_has_no_rungs_and_asha_defaults_its_first():
    assert Pruning().rungs(100) == ()
    assert Pruning("asha").rungs(100) == (13, 39)
    assert Pruning("asha", min_epochs=2, eta=2).rungs(10) == (2, 4, 8)


@pytest.mark.parametrize(
    "parse, text, message",
    [(eta, "1", "1 is not an integer >= 2"), (eta, "x", "'x' is not an integer"), (epochs_count, "0", "0 is not")],
)
def test_prune_numbers_are_checked(parse, text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def _grid(**axes) -> list:
    return expand(load_grid(GRID, [(k, [str(v) for v in vs]) for k, vs in axes.items()]))


def test_preflight_refuses_pruning_a_single_configuration():
    grid = _grid(epochs=[20], imgsz=[320], lr0=[0.01], seed=[1, 2])
    with pytest.raises(InputError) as caught:
        check_pruning(Pruning("asha"), grid)
    assert str(caught.value) == (
        "--prune asha: the grid has one configuration (base); successive halving compares several "
        "(add values to a grid key, or drop --prune)"
    )
    check_pruning(Pruning(), grid)  # off: anything goes


def test_preflight_refuses_a_grid_with_no_rung_and_passes_one_with_a_rung():
    with pytest.raises(InputError, match=r"no rung before the last epoch \(first rung 4, epochs=4\)"):
        check_pruning(Pruning("asha"), _grid(epochs=[4], lr0=[0.01, 0.1]))
    check_pruning(Pruning("asha"), _grid(epochs=[5], lr0=[0.01, 0.1]))
    check_pruning(Pruning("asha", min_epochs=1), _grid(epochs=[2], lr0=[0.01, 0.1]))


class _Runs:
    """The few MLflow client calls a Pruner makes, on runs held in memory."""

    def __init__(self):
        self.tags: dict[str, dict[str, str]] = {}
        self.searches = 0

    def set_tag(self, run_id, key, value):
        self.tags.setdefault(run_id, {})[key] = value

    def search_runs(self, experiments, query, max_results):
        self.searches += 1
        return [
            SimpleNamespace(info=SimpleNamespace(run_id=r), data=SimpleNamespace(tags=dict(t)))
            for r, t in self.tags.items()
        ]


def _train(pruner: Pruner, values: list[float], folder: Path) -> SimpleNamespace:
    """Epochs 1.. with these mAPs through the callbacks, as ultralytics' loop fires them."""
    (folder / "weights").mkdir(parents=True)
    trainer = SimpleNamespace(stop=False, last=folder / "weights" / "last.pt", epoch=0, metrics={})
    for epoch, value in enumerate(values):
        trainer.epoch, trainer.metrics = epoch, {"metrics/mAP50-95(B)": value}
        trainer.last.write_bytes(f"with optimizer, epoch {epoch + 1}".encode())
        pruner.on_train_epoch_end(trainer)
        pruner.on_fit_epoch_end(trainer)
        if trainer.stop:
            break
    trainer.last.write_bytes(b"stripped")  # final_eval strips it, then validates best.pt
    pruner.on_val_start(None)
    pruner.on_fit_epoch_end(trainer)
    return trainer


def test_pruner_stops_the_worst_run_at_its_rung_and_keeps_a_resumable_last_pt(tmp_path):
    runs = _Runs()
    pruning = Pruning("asha", min_epochs=2, eta=3)

    def pruner(run_id):
        return Pruner(runs, run_id, experiment_id="1", session_id="s", pruning=pruning, epochs=6)

    first, second = (
        _train(pruner("a"), [0.1, 0.5, 0.6], tmp_path / "a"),
        _train(pruner("b"), [0.1, 0.4], tmp_path / "b"),
    )
    worst = pruner("c")
    third = _train(worst, [0.9, 0.2, 0.3], tmp_path / "c")
    assert (first.stop, second.stop, third.stop, third.epoch) == (False, False, True, 1)
    assert runs.tags["c"] == {"suite.rung.2": "0.2", TAG_PRUNED: "rung=2 value=0.2 cut=0.5 reached=3 eta=3"}
    assert runs.tags["a"] == {"suite.rung.2": "0.5"}  # 6 epochs, eta 3: one rung, at 2
    assert runs.searches == 3  # one per run at its rung, none at other epochs
    assert third.last.read_bytes() == b"with optimizer, epoch 2"
    assert worst.stopped.reason() == (
        "pruned at epoch 2: val mAP50-95 0.2000 below the cut 0.5000 (top 1/3 of 3 runs at that epoch go on)"
    )
    assert Pruned.parse(runs.tags["c"][TAG_PRUNED]) == worst.stopped


def test_chain_calls_each_events_handlers_in_order():
    calls = []
    chained = chain({"a": lambda x: calls.append(("p", x))}, {"a": lambda x: calls.append(("r", x)), "b": calls.append})
    chained["a"](1)
    chained["b"](2)
    assert calls == [("p", 1), ("r", 1), 2]
