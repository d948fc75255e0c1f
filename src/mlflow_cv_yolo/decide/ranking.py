"""Ranking a session's runs: configurations over seeds, seed noise, hyperparameter effects.

Pure logic on plain records read back from MLflow; nothing here talks to a server.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mlflow_cv_yolo.runs.pruner import Pruned
from mlflow_cv_yolo.runs.record import RunRecord

METRIC = "best/mAP50-95"
TIEBREAK = "best/mAP50"
SEED = "seed"
TABLE_METRICS = ("mAP50-95", "mAP50", "precision", "recall")
TABLE_PARAMS = ("epochs", "imgsz", "lr0", "seed")


@dataclass(frozen=True)
class ConfigScore:
    """One configuration (a grid point without its seed) scored over its seeds."""

    config_id: str
    runs: tuple[RunRecord, ...]  # best first
    mean: float
    std: float  # population std (ddof=0): describes the seeds that ran; 0.0 for one seed
    n: int
    best_run: RunRecord
    tiebreak_mean: float
    spread: float  # range (max - min) across seeds; 0.0 for one seed


@dataclass(frozen=True)
class NoiseVerdict:
    best: ConfigScore | None
    runner_up: ConfigScore | None
    gap: float | None  # best.mean - runner_up.mean
    spread: float | None  # None when no seed repeats: noise cannot be estimated
    significant: bool
    sentence: str


class LevelEffect(NamedTuple):
    level: str
    mean: float
    std: float  # population std, as in ConfigScore
    n: int


def _value(run: RunRecord, metric: str) -> float:
    value = run.metrics.get(metric)
    return value if value is not None and math.isfinite(value) else -math.inf


def _tie_key(value: float) -> float:
    # Means computed over different seed sets can differ in the last bit for what
    # is the same number; round so they tie and the tiebreak gets its turn.
    return round(value, 9) if math.isfinite(value) else value


def _run_key(run: RunRecord, metric: str, tiebreak: str) -> tuple[float, float, int]:
    return (-_tie_key(_value(run, metric)), -_tie_key(_value(run, tiebreak)), run.start_time)


def _is_ranked(run: RunRecord, metric: str) -> bool:
    # A pruned run's best is that of a shorter training: configurations compete on full ones.
    return run.status == "FINISHED" and not run.pruned and math.isfinite(_value(run, metric))


def excluded(runs: Iterable[RunRecord], metric: str = METRIC) -> list[tuple[RunRecord, str]]:
    """The runs `rank_configs` leaves out, each with the reason why."""
    out: list[tuple[RunRecord, str]] = []
    for run in runs:
        if run.status != "FINISHED":
            out.append((run, f"status {run.status}"))
        elif run.pruned:
            out.append((run, f"pruned ({run.pruned})"))
        elif metric not in run.metrics:
            out.append((run, f"no {metric} logged"))
        elif not math.isfinite(run.metrics[metric]):
            out.append((run, f"{metric} is {run.metrics[metric]}"))
    return out


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else -math.inf


def rank_configs(runs: Iterable[RunRecord], metric: str = METRIC, tiebreak: str = TIEBREAK) -> list[ConfigScore]:
    """Configurations by mean metric over seeds, best first.

    Ties go to the higher mean tiebreak metric, then to the configuration whose
    best run started first. Failed runs and runs without the metric are left out.
    """
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if _is_ranked(run, metric):
            groups[run.config_id].append(run)
    scores = []
    for config_id, members in groups.items():
        members.sort(key=lambda r: _run_key(r, metric, tiebreak))
        values = [r.metrics[metric] for r in members]
        scores.append(
            ConfigScore(
                config_id=config_id,
                runs=tuple(members),
                mean=statistics.fmean(values),
                std=statistics.pstdev(values),
                n=len(values),
                best_run=members[0],
                tiebreak_mean=_finite_mean(_value(r, tiebreak) for r in members),
                spread=max(values) - min(values),
            )
        )
    scores.sort(key=lambda s: (-_tie_key(s.mean), -_tie_key(s.tiebreak_mean), s.best_run.start_time))
    return scores


def choose_candidate(ranking: Sequence[ConfigScore]) -> RunRecord | None:
    """The best configuration's best seed run (the plain best run with one seed each)."""
    return ranking[0].best_run if ranking else None


def _describe(own: dict[str, str], other: dict[str, str], fallback: str) -> str:
    keys = sorted(k for k in own.keys() | other.keys() if k != SEED and own.get(k) != other.get(k))
    return ", ".join(f"{k}={own.get(k, '(unset)')}" for k in keys) or fallback


def seed_noise(ranking: Sequence[ConfigScore], metric: str = METRIC) -> NoiseVerdict:
    """Is the gap between the best two configurations larger than the seed spread?

    The spread is the larger of the two configurations' ranges (max - min over
    seeds). With the two or three seeds a grid affords, a standard deviation is
    a poor estimate; the range is what a reader can check in the table, and a gap
    no bigger than one seed-to-seed swing is not evidence for either side.
    """
    label = metric.removeprefix("best/")
    if len(ranking) < 2:
        what = f"only one configuration ({ranking[0].config_id})" if ranking else "no configuration"
        sentence = f"{what[0].upper()}{what[1:]} finished with {label}: seed noise cannot be estimated."
        return NoiseVerdict(ranking[0] if ranking else None, None, None, None, False, sentence)
    best, second = ranking[0], ranking[1]
    gap = best.mean - second.mean
    winner = _describe(best.best_run.params, second.best_run.params, best.config_id)
    loser = _describe(second.best_run.params, best.best_run.params, second.config_id)
    head = f"{winner} beats {loser} by {gap:.3f} {label}"
    repeated = [s for s in (best, second) if s.n > 1]
    if not repeated:
        sentence = f"{head}, but each ran with one seed: seed noise cannot be estimated, so the gap may be noise."
        return NoiseVerdict(best, second, gap, None, False, sentence)
    spread = max(s.spread for s in repeated)
    significant = gap > spread
    verdict = (
        "larger than the noise"
        if significant
        else "within seed noise: the choice between them is not supported by the data"
    )
    sentence = f"{head}, seed spread {spread:.3f}: {verdict}."
    return NoiseVerdict(best, second, gap, spread, significant, sentence)


def _level_order(level: str) -> tuple[int, float, str]:
    # Numeric levels sort by value (imgsz 64 before 320), others alphabetically.
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def axis_effects(
    runs: Iterable[RunRecord], axes: Sequence[str] | None = None, metric: str = METRIC
) -> dict[str, list[LevelEffect]]:
    """Mean and std of the metric per level of each axis, pooled over the other axes.

    Without `axes`, every param taking more than one value among the ranked runs,
    except the seed (pass `axes=[..., "seed"]` to see it).
    """
    ranked = [r for r in runs if _is_ranked(r, metric)]
    if axes is None:
        names = sorted({k for r in ranked for k in r.params} - {SEED})
        axes = [a for a in names if len({r.params.get(a) for r in ranked if a in r.params}) > 1]
    effects: dict[str, list[LevelEffect]] = {}
    for axis in axes:
        by_level: dict[str, list[float]] = defaultdict(list)
        for run in ranked:
            if axis in run.params:
                by_level[run.params[axis]].append(run.metrics[metric])
        effects[axis] = [
            LevelEffect(level, statistics.fmean(v), statistics.pstdev(v), len(v))
            for level, v in sorted(by_level.items(), key=lambda kv: _level_order(kv[0]))
        ]
    return effects


def _pruned_at(tag: str | None) -> str | None:
    stopped = Pruned.parse(tag)
    return f"epoch {stopped.rung} ({stopped.value:.4f} < cut {stopped.cut:.4f})" if stopped else None


def runs_table(runs: Iterable[RunRecord], metric: str = METRIC, tiebreak: str = TIEBREAK) -> list[dict[str, Any]]:
    """One row per run, best first; runs that cannot be ranked (failed, no metric) last."""
    runs = list(runs)
    ranked = sorted((r for r in runs if _is_ranked(r, metric)), key=lambda r: _run_key(r, metric, tiebreak))
    unranked = sorted((r for r in runs if not _is_ranked(r, metric)), key=lambda r: r.start_time)
    with_test = any("test/mAP50-95" in r.metrics for r in runs)
    reused = any(r.reused_from for r in runs)
    pruned = any(r.pruned for r in runs)
    rows = []
    for run in ranked + unranked:
        row: dict[str, Any] = {"run": run.run_id, "name": run.name, "status": run.status}
        row.update({p: run.params.get(p) for p in TABLE_PARAMS})
        row.update({m: run.metrics.get(f"best/{m}") for m in TABLE_METRICS})
        if with_test:
            row["test/mAP50-95"] = run.metrics.get("test/mAP50-95")
        if reused:
            row["reused from"] = f"session {run.reused_from}" if run.reused_from else None
        if pruned:
            row["pruned at"] = _pruned_at(run.pruned)
        rows.append(row)
    return rows
