"""The decision table's bootstrap criteria and where their thresholds come from."""

from __future__ import annotations

import dataclasses

import pytest

from mlflow_cv_yolo.decide import bootstrap
from mlflow_cv_yolo.decide.decision import Criteria, Criterion, Decision, failure_line
from mlflow_cv_yolo.decide.promotion import ci_criteria
from mlflow_cv_yolo.settings import criteria_from

INI = {"min_map": "0.25", "min_map_scratch": "0.0", "min_improvement": "0.0", "max_drop": "0.0", "gate_stat": "ci"}
ON_VAL = "candidate 0.3000 vs production v1 0.2900 on val"


def row(name, kind, delta, low, high, objects=50):
    return bootstrap.Delta(name, kind, 0.3 + delta, 0.3, delta, low, high, 10, objects, objects >= 20)


def test_an_interval_that_contains_zero_is_no_improvement():
    checks = ci_criteria([row("overall", "overall", 0.0, -0.01, 0.01)], Criteria(0.25, 0.0, 0.0), ON_VAL)
    assert [(c.name, c.value, c.passed) for c in checks] == [
        ("improvement over champion", -0.01, False),
        ("no regression by size or slice", None, True),
    ]
    assert checks[0].note == (
        "Δ test mAP50-95 +0.0000, 95% interval [-0.0100, +0.0100] over 10 images (paired bootstrap); " + ON_VAL
    )


def test_a_slice_that_surely_loses_blocks_and_is_named():
    rows = [
        row("overall", "overall", 0.05, 0.02, 0.08),
        row("small", "size", 0.01, -0.02, 0.04),
        row("slice crowded", "slice", -0.06, -0.09, -0.03),
        row("slice lone", "slice", -0.5, -0.9, -0.1, objects=2),  # too little support: shown, not gated
    ]
    checks = ci_criteria(rows, Criteria(0.25, 0.0, 0.0, max_drop=0.01), ON_VAL)
    assert [(c.name, c.threshold, c.value, c.passed) for c in checks] == [
        ("improvement over champion", 0.0, 0.02, True),
        ("no regression by size or slice", -0.01, -0.03, False),
    ]
    decision = Decision("rejected", "", "s", criteria=(Criterion("complete session", None, None, True), *checks))
    assert failure_line(decision) == (
        "promotion gate FAILED: no regression by size or slice: slice crowded Δ -0.0600 [-0.0900, -0.0300] "
        "(upper bound below -0.0100)"
    )
    # A looser max_drop lets the same slice through; the unsupported one never counts.
    relaxed = ci_criteria(rows, Criteria(0.25, 0.0, 0.0, max_drop=0.05), ON_VAL)[1]
    assert relaxed.passed
    assert relaxed.note == "gated: small, slice crowded; shown only (< 20 objects): slice lone"


def test_the_improvement_failure_line_says_it_is_the_lower_bound():
    checks = ci_criteria([row("overall", "overall", 0.0, 0.0, 0.0)], Criteria(0.25, 0.0, 0.0), ON_VAL)
    assert failure_line(Decision("rejected", "", "s", criteria=tuple(checks))) == (
        "promotion gate FAILED: improvement over champion = +0.0000, needs > 0.0000 (interval's lower bound on test)"
    )


def test_max_drop_and_gate_stat_come_from_the_command_line_then_the_grid_file_then_the_ini():
    assert criteria_from({}, INI, {}) == Criteria(0.25, 0.0, 0.0, max_drop=0.0, gate_stat="ci")
    assert criteria_from({}, INI, {"max_drop": 0.02}).max_drop == 0.02
    given = {"max_drop": 0.05, "gate_stat": "point"}
    assert criteria_from(given, INI, {"max_drop": 0.02}) == Criteria(0.25, 0.0, 0.0, max_drop=0.05, gate_stat="point")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_drop", "2", "pytest.ini max_drop = '2': 2 is not in [0, 1]"),
        ("gate_stat", "mean", "pytest.ini gate_stat = 'mean': 'mean' is not one of ci, point"),
    ],
)
def test_a_bad_ini_value_names_its_key(key, value, message):
    with pytest.raises(ValueError) as err:
        criteria_from({}, {**INI, key: value}, {})
    assert str(err.value) == message


def test_the_decision_record_has_the_delta_table_and_both_noises():
    rows = [row("overall", "overall", 0.05, 0.02, 0.08), row("slice lone", "slice", -0.5, -0.9, -0.1, objects=2)]
    decision = Decision(
        "promoted",
        "passed",
        "s1",
        noise="seeds move val mAP50-95 by 0.0100",
        deltas=tuple(dataclasses.asdict(r) for r in rows),
    )
    lines = decision.markdown().splitlines()
    assert lines[
        lines.index("| test mAP50-95 | candidate | champion | Δ | 95% interval | images | objects | gated |") :
    ][2:4] == [
        "| overall | 0.3500 | 0.3000 | +0.0500 | [+0.0200, +0.0800] | 10 | 50 | — |",
        "| slice lone | -0.2000 | 0.3000 | -0.5000 | [-0.9000, -0.1000] | 10 | 2 | no (< 20 objects) |",
    ]
    assert "Seed noise: seeds move val mAP50-95 by 0.0100" in lines
    assert (
        "Image noise: between test images, the 95% interval of Δ test mAP50-95 is 0.0600 wide "
        "([+0.0200, +0.0800], 10 images, paired bootstrap)"
    ) in lines
