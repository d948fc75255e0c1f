"""Successive halving (--prune asha) on a run as it trains: at each rung epoch it
records its val mAP50-95 on the run, reads what the session's other runs recorded at
that rung from MLflow (so it works alike in one process, under xdist and on Ray
nodes), and stops training when the rule (train/pruning.py) says so.

A few requests per rung, none per batch or per other epoch. A stopped run ends
FINISHED with its metrics up to the rung, tagged `suite.pruned`, and keeps a
`last.pt` that ultralytics can continue from (see resume): the same run key, so a
later session without --prune finishes it into the same run."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.train.pruning import Pruning, decide

TAG_PRUNED = tracking.TAG_PRUNED  # "rung=4 value=0.01 cut=0.2 reached=6 eta=3"
TAG_WAS_PRUNED = "suite.was_pruned"  # a continued run: where an earlier session had stopped it
RUNG_TAG = "suite.rung.{}"  # suite.rung.4 = the run's val mAP50-95 at epoch 4 (what other runs compare)
METRIC = "metrics/mAP50-95(B)"  # ultralytics' name of the compared value
KEPT = "last_pruned.pt"  # last.pt as saved at the rung, before ultralytics strips its optimizer


@dataclass(frozen=True)
class Pruned:
    rung: int
    value: float
    cut: float
    reached: int
    eta: int

    def tag(self) -> str:
        return f"rung={self.rung} value={self.value:.6g} cut={self.cut:.6g} reached={self.reached} eta={self.eta}"

    @classmethod
    def parse(cls, text: str | None) -> Pruned | None:
        if not text:
            return None
        fields = dict(part.split("=", 1) for part in text.split())
        return cls(
            int(fields["rung"]),
            float(fields["value"]),
            float(fields["cut"]),
            int(fields["reached"]),
            int(fields["eta"]),
        )

    def reason(self) -> str:
        """The one line a pruned run's test is skipped with."""
        return (
            f"pruned at epoch {self.rung}: val mAP50-95 {self.value:.4f} below the cut {self.cut:.4f} "
            f"(top 1/{self.eta} of {self.reached} runs at that epoch go on)"
        )


def pruned(run) -> Pruned | None:
    """Where successive halving stopped `run` (an MLflow run), or None."""
    return Pruned.parse(run.data.tags.get(TAG_PRUNED))


def _value(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


class Pruner:
    """ultralytics callbacks for one run of a session (`experiment_id`, `session_id`)."""

    def __init__(
        self, client: MlflowClient, run_id: str, *, experiment_id: str, session_id: str, pruning: Pruning, epochs: int
    ):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.session_id = session_id
        self.eta = pruning.eta
        self.rungs = set(pruning.rungs(epochs))
        self._epoch_done = False
        self._kept: Path | None = None
        self.stopped: Pruned | None = None

    @property
    def callbacks(self) -> dict:
        return {
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_val_start": self.on_val_start,
        }

    def on_train_epoch_end(self, trainer) -> None:
        self._epoch_done = True

    def on_fit_epoch_end(self, trainer) -> None:
        # Also fired for best.pt's final validation: only a finished epoch is compared.
        if not self._epoch_done:
            return
        self._epoch_done = False
        epoch = trainer.epoch + 1
        if epoch not in self.rungs:
            return
        metric = (trainer.metrics or {}).get(METRIC)
        value = math.nan if metric is None else float(metric)
        tag = RUNG_TAG.format(epoch)
        self.client.set_tag(self.run_id, tag, repr(value))
        verdict = decide(value, self._others(tag), self.eta)
        if verdict.go_on:
            return
        self.stopped = Pruned(epoch, value, verdict.cut, verdict.reached, self.eta)
        self.client.set_tag(self.run_id, TAG_PRUNED, self.stopped.tag())
        last = Path(trainer.last)
        if last.is_file():  # saved this epoch, with the optimizer state resuming needs
            self._kept = last.with_name(KEPT)
            shutil.copy2(last, self._kept)
        trainer.stop = True  # ultralytics ends after this epoch and still validates best.pt

    def _others(self, tag: str) -> list[float]:
        """The values the session's other runs recorded at this rung (one search)."""
        query = f"tags.`{tracking.TAG_SESSION}` = '{self.session_id}' and tags.`{tracking.TAG_KIND}` = 'grid'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=1000)
        return [_value(r.data.tags[tag]) for r in runs if r.info.run_id != self.run_id and tag in r.data.tags]

    def on_val_start(self, validator) -> None:
        # ultralytics' final_eval has just stripped last.pt of its optimizer: put the
        # resumable one back before it is uploaded.
        if self._kept is not None and self._kept.is_file():
            shutil.move(self._kept, self._kept.with_name("last.pt"))
            self._kept = None


def chain(*handlers: dict) -> dict:
    """Callbacks of several recorders as one event -> function dict, each event's in the
    order given (a Pruner's before a RunRecorder's: last.pt is restored before its upload)."""
    events: dict[str, list] = {}
    for callbacks in handlers:
        for event, fn in callbacks.items():
            events.setdefault(event, []).append(fn)

    def calling(fns):
        def call(arg) -> None:
            for fn in fns:
                fn(arg)

        return call

    return {event: fns[0] if len(fns) == 1 else calling(fns) for event, fns in events.items()}
