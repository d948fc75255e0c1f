"""The successive-halving rule: rungs, and continue or stop at one."""

from __future__ import annotations

import math

import pytest

from mlflow_cv_yolo.train.pruning import Verdict, decide, default_min_epochs, rungs

NAN = math.nan


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
