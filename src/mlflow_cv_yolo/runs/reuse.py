"""Before a test trains: the run it will be. A FINISHED run of the experiment with
the same key (see run_key) whose checks still pass is the test's result as it is
(reused: nothing is trained, and the run keeps the tags of the session that trained
it); else an interrupted run with the same key is continued (see resume); else a
new run is opened. `--rerun` skips the first, `--no-resume` the second.

A run that successive halving stopped (tag `suite.pruned`) is a result only for a
session that prunes too; any other continues it, as an interrupted one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.runs import pruner, resume, tracking, training_run
from mlflow_cv_yolo.runs.key import TAG as TAG_KEY
from mlflow_cv_yolo.runs.key import data_digest as run_key_data
from mlflow_cv_yolo.runs.key import run_key
from mlflow_cv_yolo.train.grid import RunConfig

REUSED = "reused"
RESUMED = "resumed"
NEW = "new"
PRUNED_RUN = "pruned"  # plan: a pruned run that a session without --prune continues


@dataclass(frozen=True)
class Start:
    run_id: str
    action: str  # REUSED, RESUMED or NEW
    key: str
    from_session: str | None = None  # the session that trained it (reused) or was interrupted (resumed)
    checkpoint: Path | None = None  # resumed: the last.pt training continues from
    was_pruned: str | None = None  # resumed: where --prune had stopped it


def data_digest(info: SessionInfo) -> str:
    """The data's part of the key. Data that differs from dvc.lock is not what the lock's
    digest names: it is listed instead."""
    return run_key_data(Path(info.data), None if info.dataset_dirty else info.dataset_md5)


def key_of(config: RunConfig, info: SessionInfo, device: str | None) -> str:
    return run_key(config.values, model_used=info.model_used, data=info.data_digest or data_digest(info), device=device)


def runs_with_key(client: MlflowClient, experiment_id: str, key: str) -> list:
    """The experiment's grid runs with `key`, newest first: one query serves both
    the finished runs (reuse) and the interrupted ones (resume)."""
    query = f"tags.`{TAG_KEY}` = '{key}' and tags.`{tracking.TAG_KIND}` = 'grid'"
    return list(client.search_runs([experiment_id], query, max_results=50, order_by=["attributes.start_time DESC"]))


def find_finished(client: MlflowClient, runs: list, *, epochs: int, prune: bool = False):
    """The newest FINISHED run that still passes `check_run`, or None; a pruned one
    only when this session prunes (`prune`)."""
    for run in runs:
        if run.info.status != "FINISHED" or (pruner.pruned(run) and not prune):
            continue
        if training_run.check_run(client, run.info.run_id, epochs, run=run) == []:
            return run
    return None


def _lookup(client: MlflowClient, config: RunConfig, info: SessionInfo, device: str | None) -> Start | str | None:
    """A reusable run's Start; else PRUNED_RUN where a pruned run waits to be continued."""
    key = key_of(config, info, device)
    runs = runs_with_key(client, info.experiment_id, key)
    run = find_finished(client, runs, epochs=config.epochs)
    if run is not None:
        return Start(run.info.run_id, REUSED, key, run.data.tags.get(tracking.TAG_SESSION))
    return PRUNED_RUN if any(r.info.status == "FINISHED" and pruner.pruned(r) for r in runs) else None


def plan(
    client: MlflowClient, grid: list[RunConfig], info: SessionInfo, *, device: str | None
) -> tuple[dict[str, list], tuple[str, ...]]:
    """What the controller finds before any test runs: the configurations of `grid`
    that have a reusable FINISHED run, config id -> [run id, key, the session that
    trained it] (SessionInfo.reusable), and those whose pruned run a session that does
    not prune continues (SessionInfo.continued). A test whose key matches takes its run
    from here without asking the server again; if every configuration is reusable, the
    session trains nothing and needs no worker.

    One configuration at a time (each check makes its own reads at once): the server
    has just started, and its first requests are slow, concurrent ones slower still —
    the default grid's lookups took 7.3 s 8 at a time and 2.1 s one at a time."""
    found = {config.id: _lookup(client, config, info, device) for config in grid}
    reusable = {config_id: [s.run_id, s.key, s.from_session] for config_id, s in found.items() if isinstance(s, Start)}
    return reusable, tuple(config_id for config_id, s in found.items() if s == PRUNED_RUN)


def start(
    client: MlflowClient,
    config: RunConfig,
    info: SessionInfo,
    *,
    rerun: bool = False,
    resume_runs: bool = True,
    device: str | None = "cpu",
    prune: bool = False,
) -> Start:
    key = key_of(config, info, device)
    planned = info.reusable.get(config.id)
    if not rerun and planned and planned[1] == key:
        return Start(planned[0], REUSED, key, planned[2])
    runs = runs_with_key(client, info.experiment_id, key) if not rerun or resume_runs else []
    if not rerun:
        run = find_finished(client, runs, epochs=config.epochs, prune=prune)
        if run is not None:
            return Start(run.info.run_id, REUSED, key, run.data.tags.get(tracking.TAG_SESSION))
    if resume_runs:
        found = resume.find(client, runs, epochs=config.epochs, workdir=Path(info.workdir))
        if found is not None:
            resume.reopen(client, found, info)
            return Start(found.run_id, RESUMED, key, found.session, found.checkpoint, found.pruned)
    return Start(training_run.open_run(client, config, info, key=key), NEW, key)
