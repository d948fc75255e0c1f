"""Asynchronous successive halving (ASHA, Li et al. 2018) over a grid's runs: where
the rungs are, and whether a run that reached one goes on.

Pure arithmetic on numbers: where the values come from (MLflow) is the runs stage's
business (runs/pruner.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MODES = ("off", "asha")
DEFAULT_ETA = 3
# ultralytics' default warmup_epochs, which training.train leaves as it is: lr and
# momentum still ramp until then, so a value before it says little about the run.
WARMUP_EPOCHS = 3
# The first rung by default: this fraction of the epochs, rounded up.
DEFAULT_MIN_FRACTION = 1 / 8


def default_min_epochs(epochs: int) -> int:
    """1/8 of `epochs` (rounded up), never before the first epoch after warm-up."""
    return max(WARMUP_EPOCHS + 1, math.ceil(epochs * DEFAULT_MIN_FRACTION))


def rungs(min_epochs: int, eta: int, epochs: int) -> tuple[int, ...]:
    """The epochs (1-based) at which a run is compared: min_epochs * eta**k, below
    `epochs` (the last epoch is the end of training, not a rung)."""
    if min_epochs < 1 or eta < 2:
        raise ValueError(f"min_epochs={min_epochs}, eta={eta}: need min_epochs >= 1 and eta >= 2")
    found, rung = [], min_epochs
    while rung < epochs:
        found.append(rung)
        rung *= eta
    return tuple(found)


@dataclass(frozen=True)
class Pruning:
    """A session's --prune settings; plain values, so they travel with a run to any worker."""

    mode: str = "off"  # MODES
    min_epochs: int | None = None  # the first rung; None: default_min_epochs of the run's epochs
    eta: int = DEFAULT_ETA

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """A run of `epochs` epochs is compared at these; none when pruning is off."""
        if not self.on:
            return ()
        return rungs(self.min_epochs or default_min_epochs(epochs), self.eta, epochs)


@dataclass(frozen=True)
class Verdict:
    go_on: bool
    value: float  # this run's value at the rung (nan when it had none)
    cut: float  # the value a run needed to go on (nan: fewer than eta runs, no cut yet)
    reached: int  # runs at the rung, this one included


def decide(value: float, others: Iterable[float], eta: int) -> Verdict:
    """Continue when `value` is in the top 1/eta of the runs that reached the rung so far
    (this one and `others`), higher being better: at least the k-th best value, k =
    floor(n / eta), so a tie at the cut continues. With fewer than eta runs at the
    rung every run continues. A NaN value is the worst (it stops once there is a cut);
    NaN among the others is ignored, as a run that recorded nothing there."""
    if eta < 2:
        raise ValueError(f"eta={eta}: need eta >= 2")
    finite = [v for v in others if not math.isnan(v)]
    reached = len(finite) + 1
    if reached < eta:
        return Verdict(True, value, math.nan, reached)
    mine = -math.inf if math.isnan(value) else value
    ranked = sorted([*finite, mine], reverse=True)
    cut = ranked[reached // eta - 1]
    return Verdict(mine >= cut and not math.isnan(value), value, cut, reached)
