"""Ranking, candidate choice, seed noise and effects on hand-made run tables."""

from __future__ import annotations

import math

import pytest

from mlflow_cv_yolo.decide.ranking import (
    RunRecord,
    axis_effects,
    choose_candidate,
    excluded,
    rank_configs,
    runs_table,
    seed_noise,
)

_clock = iter(range(1_000, 1_000_000, 1_000))


def run(
    map5095: float | None,
    map50: float = 0.5,
    *,
    status: str = "FINISHED",
    start: int | None = None,
    extra: dict[str, float] | None = None,
    **axes: object,
) -> RunRecord:
    """A run of the grid point `axes`, named like its test id (imgsz416-lr00.01-seed42)."""
    params = {"epochs": "3", "batch": "8", "optimizer": "SGD", "model": "yolov8n.pt"}
    params.update({k: str(v) for k, v in axes.items()})
    name = "-".join(f"{k}{v}" for k, v in axes.items()) or "base"
    config_id = "-".join(f"{k}{v}" for k, v in axes.items() if k != "seed") or "base"
    metrics = {"best/mAP50": map50, **(extra or {})}
    if map5095 is not None:
        metrics["best/mAP50-95"] = map5095
    return RunRecord(
        run_id=f"id-{name}",
        name=name,
        config_id=config_id,
        status=status,
        start_time=next(_clock) if start is None else start,
        params=params,
        metrics=metrics,
    )


def test_mean_tie_goes_to_higher_tiebreak_mean() -> None:
    # Both means are 0.4, though fmean([0.7, 0.1]) is 0.39999999999999997 in floats.
    runs = [
        run(0.7, 0.7, imgsz=320, seed=1),
        run(0.1, 0.7, imgsz=320, seed=2),
        run(0.4, 0.6, imgsz=416, seed=1),
        run(0.4, 0.6, imgsz=416, seed=2),
    ]
    ranking = rank_configs(runs)
    assert [s.config_id for s in ranking] == ["imgsz320", "imgsz416"]


def test_full_tie_goes_to_earlier_best_run() -> None:
    runs = [run(0.4, 0.7, start=200, imgsz=416, seed=1), run(0.4, 0.7, start=100, imgsz=320, seed=1)]
    assert [s.config_id for s in rank_configs(runs)] == ["imgsz320", "imgsz416"]


def test_failed_and_metricless_runs_are_excluded_and_reported() -> None:
    good = run(0.3, imgsz=320, seed=1)
    failed = run(0.9, status="FAILED", imgsz=416, seed=1)
    missing = run(None, imgsz=640, seed=1)
    nan = run(math.nan, imgsz=512, seed=1)
    ranking = rank_configs([good, failed, missing, nan])
    assert [s.config_id for s in ranking] == ["imgsz320"]
    assert choose_candidate(ranking) == good
    reasons = dict((r.name, why) for r, why in excluded([good, failed, missing, nan]))
    assert reasons == {
        "imgsz416-seed1": "status FAILED",
        "imgsz640-seed1": "no best/mAP50-95 logged",
        "imgsz512-seed1": "best/mAP50-95 is nan",
    }


def test_pruned_runs_are_left_out_of_the_ranking_and_say_where_they_stopped() -> None:
    import dataclasses

    full = run(0.3, imgsz=320, seed=1)
    stopped = dataclasses.replace(run(0.9, imgsz=416, seed=1), pruned="rung=4 value=0.01 cut=0.2 reached=3 eta=3")
    same_config = run(0.2, imgsz=416, seed=2)
    ranking = rank_configs([full, stopped, same_config])
    assert [(s.config_id, s.n, s.mean) for s in ranking] == [("imgsz320", 1, 0.3), ("imgsz416", 1, 0.2)]
    assert [(r.name, why) for r, why in excluded([full, stopped, same_config])] == [
        ("imgsz416-seed1", "pruned (rung=4 value=0.01 cut=0.2 reached=3 eta=3)")
    ]


def test_one_seed_per_config_picks_plain_best_run_and_cannot_estimate_noise() -> None:
    runs = [run(0.30, imgsz=320, seed=42), run(0.34, imgsz=416, seed=42), run(0.31, imgsz=512, seed=42)]
    ranking = rank_configs(runs)
    assert choose_candidate(ranking) == runs[1]
    assert all(s.n == 1 and s.std == 0.0 and s.spread == 0.0 for s in ranking)
    verdict = seed_noise(ranking)
    assert verdict.spread is None and not verdict.significant
    assert verdict.gap == pytest.approx(0.03)
    assert verdict.sentence.startswith("imgsz=416 beats imgsz=512 by 0.030 mAP50-95")
    assert "cannot be estimated" in verdict.sentence


def test_only_one_config_cannot_estimate_noise() -> None:
    ranking = rank_configs([run(0.3, seed=1), run(0.32, seed=2)])
    assert [(s.config_id, s.n) for s in ranking] == [("base", 2)]
    assert "cannot be estimated" in seed_noise(ranking).sentence
    assert "cannot be estimated" in seed_noise([]).sentence
    assert choose_candidate([]) is None


def test_gap_larger_than_seed_spread_is_significant() -> None:
    runs = [
        run(0.50, imgsz=416, seed=1),
        run(0.52, imgsz=416, seed=42),
        run(0.45, imgsz=320, seed=1),
        run(0.46, imgsz=320, seed=42),
    ]
    ranking = rank_configs(runs)
    best = ranking[0]
    assert (best.config_id, best.n) == ("imgsz416", 2)
    assert best.mean == pytest.approx(0.51) and best.std == pytest.approx(0.01)  # population std
    assert best.spread == pytest.approx(0.02)
    assert [r.name for r in best.runs] == ["imgsz416-seed42", "imgsz416-seed1"]
    assert choose_candidate(ranking) == runs[1]
    verdict = seed_noise(ranking)
    assert verdict.significant
    assert verdict.sentence == (
        "imgsz=416 beats imgsz=320 by 0.055 mAP50-95, seed spread 0.020: larger than the noise."
    )


def test_gap_within_seed_spread_is_not_significant() -> None:
    runs = [
        run(0.50, imgsz=416, lr0=0.01, seed=1),
        run(0.40, imgsz=416, lr0=0.01, seed=42),
        run(0.44, imgsz=320, lr0=0.01, seed=1),
        run(0.44, imgsz=320, lr0=0.01, seed=42),
    ]
    verdict = seed_noise(rank_configs(runs))
    assert not verdict.significant
    assert verdict.spread == pytest.approx(0.10)
    assert verdict.sentence == (
        "imgsz=416 beats imgsz=320 by 0.010 mAP50-95, seed spread 0.100: within seed noise: "
        "the choice between them is not supported by the data."
    )


def test_noise_sentence_names_every_differing_param() -> None:
    runs = [run(0.5, imgsz=416, lr0=0.01, seed=1), run(0.4, imgsz=320, lr0=0.005, seed=1)]
    assert seed_noise(rank_configs(runs)).sentence.startswith("imgsz=416, lr0=0.01 beats imgsz=320, lr0=0.005 by 0.100")


def test_axis_effects_pool_over_other_axes() -> None:
    runs = [
        run(0.2, imgsz=320, lr0=0.005, seed=1),
        run(0.4, imgsz=320, lr0=0.01, seed=1),
        run(0.3, imgsz=416, lr0=0.005, seed=1),
        run(0.5, imgsz=416, lr0=0.01, seed=1),
        run(0.9, status="FAILED", imgsz=416, lr0=0.01, seed=2),
    ]
    effects = axis_effects(runs)
    assert list(effects) == ["imgsz", "lr0"]  # seed and constant params left out
    assert [(e.level, e.n) for e in effects["imgsz"]] == [("320", 2), ("416", 2)]
    assert [e.mean for e in effects["imgsz"]] == pytest.approx([0.3, 0.4])
    assert [e.std for e in effects["imgsz"]] == pytest.approx([0.1, 0.1])
    assert [e.mean for e in effects["lr0"]] == pytest.approx([0.25, 0.45])
    assert [e.std for e in effects["lr0"]] == pytest.approx([0.05, 0.05])
    assert list(axis_effects(runs, axes=["seed"])) == ["seed"]


def test_axis_levels_sort_numerically() -> None:
    runs = [run(0.3, imgsz=320, seed=1), run(0.1, imgsz=64, seed=1)]
    assert [e.level for e in axis_effects(runs)["imgsz"]] == ["64", "320"]


def test_runs_table_best_first_failed_last() -> None:
    runs = [
        run(0.30, start=100, extra={"best/precision": 0.6, "best/recall": 0.5}, imgsz=320, seed=1),
        run(0.50, start=200, extra={"test/mAP50-95": 0.48}, imgsz=416, seed=1),
        run(None, status="FAILED", start=50, imgsz=512, seed=1),
        run(0.40, start=300, imgsz=640, seed=1),
    ]
    rows = runs_table(runs)
    assert [r["name"] for r in rows] == ["imgsz416-seed1", "imgsz640-seed1", "imgsz320-seed1", "imgsz512-seed1"]
    assert list(rows[0]) == [
        "run",
        "name",
        "status",
        "epochs",
        "imgsz",
        "lr0",
        "seed",
        "mAP50-95",
        "mAP50",
        "precision",
        "recall",
        "test/mAP50-95",
    ]
    assert rows[0]["test/mAP50-95"] == 0.48 and rows[1]["test/mAP50-95"] is None
    assert rows[2]["precision"] == 0.6 and rows[2]["recall"] == 0.5 and rows[2]["mAP50-95"] == 0.30
    assert rows[3]["status"] == "FAILED" and rows[3]["mAP50-95"] is None
    assert "test/mAP50-95" not in runs_table(runs[:1])[0]


def test_runs_table_says_where_pruned_runs_stopped() -> None:
    import dataclasses

    stopped = dataclasses.replace(run(0.1, imgsz=416, seed=1), pruned="rung=4 value=0.01 cut=0.2 reached=3 eta=3")
    rows = runs_table([run(0.3, imgsz=320, seed=1), stopped])
    assert [(r["name"], r["pruned at"]) for r in rows] == [
        ("imgsz320-seed1", None),
        ("imgsz416-seed1", "epoch 4 (0.0100 < cut 0.2000)"),
    ]
    assert "pruned at" not in runs_table([run(0.3, imgsz=320, seed=1)])[0]
