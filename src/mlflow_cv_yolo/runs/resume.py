"""Continuing a run that did not finish: a session interrupted (Ctrl-C, SIGTERM), a
worker or controller killed. Its key must match (same arguments, weights, data,
code, libraries and device kind) and its `last.pt` must still be somewhere: in the
folder it trained in (tag `suite.train_dir`), or among its artifacts. ultralytics
then continues from the epoch after its last.pt's, into the same MLflow run.

Which runs count as interrupted: KILLED ones, FAILED ones that a crash of their
worker or session ended (tag `suite.end_reason`, no Python traceback of their own),
and FINISHED ones that successive halving stopped at a rung (tag `suite.pruned`).
A run that failed by an exception in training is not continued (it would fail
again), nor one whose test failed after it finished. RUNNING runs are left alone: a
session killed on this stack folder has its runs marked KILLED by the next one, and
on a shared server a RUNNING run may belong to a live session."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.runs import pruner, tracking

TAG_RESUMED = "resumed"
TAG_TRAIN_DIR = "suite.train_dir"  # ultralytics' folder of the run: where its last.pt is
TAG_RESUMED_FROM = "suite.resumed_from_session"  # the sessions that trained it before, oldest first
TAG_RESUMED_AT = "suite.resumed_at_epoch"  # the first epoch the last resume trained (1-based), from the trainer


@dataclass(frozen=True)
class Interrupted:
    run_id: str
    session: str
    last_pt: Path
    epoch: int  # epochs its last.pt holds (1-based count)
    pruned: str | None = None  # where --prune stopped it (its suite.pruned tag), if that is why it ended


def _interrupted(run) -> bool:
    status, reason = run.info.status, run.data.tags.get(tracking.TAG_END, "")
    if status == "KILLED" or (status == "FINISHED" and pruner.TAG_PRUNED in run.data.tags):
        return True
    return status == "FAILED" and bool(reason) and not reason.startswith("its test failed")


def _last_pt_epochs(path: Path) -> int | None:
    """How many epochs `last.pt` holds; None when it is a finished training's
    (ultralytics strips the optimizer and the epoch then) or unreadable."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    epoch = ckpt.get("epoch", -1) if isinstance(ckpt, dict) else -1
    return epoch + 1 if epoch >= 0 and ckpt.get("optimizer") is not None else None


def _last_pt(client: MlflowClient, run, workdir: Path) -> Path | None:
    folder = run.data.tags.get(TAG_TRAIN_DIR)
    if folder and (Path(folder) / "weights" / "last.pt").is_file():
        return Path(folder) / "weights" / "last.pt"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        into = tempfile.mkdtemp(prefix="resume-", dir=workdir)
        return Path(client.download_artifacts(run.info.run_id, "weights/last.pt", into))
    except (MlflowException, OSError):
        return None


def find(client: MlflowClient, runs: list, *, epochs: int, workdir: Path) -> Interrupted | None:
    """The newest interrupted run of `runs` (those with the key, newest first) whose
    last.pt can continue to `epochs`."""
    for run in runs:
        if not _interrupted(run):
            continue
        last = _last_pt(client, run, workdir)
        done = _last_pt_epochs(last) if last is not None else None
        if done is not None and 0 < done < epochs:
            session = run.data.tags.get(tracking.TAG_SESSION, "")
            return Interrupted(run.info.run_id, session, last, done, run.data.tags.get(pruner.TAG_PRUNED))
    return None


def reopen(client: MlflowClient, found: Interrupted, info: SessionInfo) -> None:
    """The run back to RUNNING, now a run of this session (the sessions that trained
    it before are kept in a tag), no longer saying why it ended."""
    run = client.get_run(found.run_id)
    earlier = [s for s in run.data.tags.get(TAG_RESUMED_FROM, "").split(",") if s]
    client.update_run(found.run_id, status="RUNNING")
    # It trains on: no tag says why or where it ended any more.
    for tag in (tracking.TAG_END, pruner.TAG_PRUNED, tracking.TAG_LAST_EPOCH, tracking.TAG_STOPPED_EARLY):
        if tag in run.data.tags:
            client.delete_tag(found.run_id, tag)
    was_pruned = run.data.tags.get(pruner.TAG_PRUNED)
    tags = {
        **({pruner.TAG_WAS_PRUNED: was_pruned} if was_pruned else {}),
        TAG_RESUMED: "true",
        TAG_RESUMED_FROM: ",".join([*earlier, found.session]),
        tracking.TAG_SESSION: info.session_id,
        MLFLOW_PARENT_RUN_ID: info.parent_run_id,
        "suite.stack": info.stack_kind,
    }
    client.log_batch(found.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
