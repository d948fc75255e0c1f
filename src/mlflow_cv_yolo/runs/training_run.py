"""One grid configuration as one MLflow run: opened by its test, trained and
recorded by an executor (in the test's process, or elsewhere), then checked from
what the server recorded."""

from __future__ import annotations

import hashlib
import math
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.runs import pruner, tracking
from mlflow_cv_yolo.runs.key import TAG as TAG_KEY
from mlflow_cv_yolo.runs.resume import TAG_RESUMED_AT, TAG_TRAIN_DIR
from mlflow_cv_yolo.train import training
from mlflow_cv_yolo.train.devices import Placement, slot
from mlflow_cv_yolo.train.grid import RunConfig
from mlflow_cv_yolo.train.pruning import Pruning

# A run ultralytics ended before its last epoch (patience): the last epoch it trained, and why.
TAG_LAST_EPOCH, TAG_STOPPED_EARLY = tracking.TAG_LAST_EPOCH, tracking.TAG_STOPPED_EARLY

REQUIRED_ARTIFACTS = (
    "results.csv",
    "args.yaml",
    "plots/results.png",
    "plots/confusion_matrix.png",
    "plots/BoxPR_curve.png",
    "weights/best.pt",
    "weights/last.pt",
)


def run_params(config: RunConfig, info: SessionInfo) -> dict[str, str]:
    data = Path(info.data)
    return {
        **{k: str(v) for k, v in config.values.items()},
        "model": info.model_requested,
        "model_used": info.model_used,
        "data": str(data),
        "data_yaml_sha256": hashlib.sha256(data.read_bytes()).hexdigest()[:16],
        **{f"version.{k}": v for k, v in tracking.versions().items()},
    }


def run_tags(config: RunConfig, info: SessionInfo, key: str | None = None) -> dict[str, str]:
    tags = {
        tracking.TAG_SESSION: info.session_id,
        tracking.TAG_KIND: "grid",
        tracking.TAG_TEST: config.id,
        "suite.config": config.config_id,
        "suite.stack": info.stack_kind,
        MLFLOW_PARENT_RUN_ID: info.parent_run_id,
        "pretrained": str(info.pretrained).lower(),
        "dataset.dirty": str(info.dataset_dirty).lower(),
    }
    if info.git_commit:
        tags["mlflow.source.git.commit"] = info.git_commit
    if key:  # what reuse and resume look runs up by (see run_key, resume)
        tags[TAG_KEY] = key
        tags[TAG_TRAIN_DIR] = str(Path(info.workdir) / config.id)
    return tags


def open_run(client: MlflowClient, config: RunConfig, info: SessionInfo, key: str | None = None) -> str:
    """The run of one test, created before its training starts wherever it trains,
    with its params and dataset input; returns its id."""
    run_id = client.create_run(info.experiment_id, run_name=config.id, tags=run_tags(config, info, key)).info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in run_params(config, info).items()])
        if info.dataset:
            log_dataset(client, run_id, info)
    except BaseException:
        client.log_text(run_id, traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def dataset_fields(info: SessionInfo) -> dict:
    """The session's DVC-versioned dataset as MLflow records it (the fields of an
    `mlflow.entities.Dataset`: name "tiny_coco", the dvc.lock digest, a DVC source):
    built once by the controller, so that a worker logs it without importing DVC."""
    from mlflow_cv_yolo.data.lineage import dataset_input

    dataset = dataset_input(Path.cwd(), info.dataset_md5, info.dataset_source, info.dataset_lock_commit)
    return dataset._to_mlflow_entity().to_dictionary()


def log_dataset(client: MlflowClient, run_id: str, info: SessionInfo) -> None:
    """The session's dataset (`dataset_fields`) as an input of the run (what
    mlflow.log_input does for the active run, for a run by id)."""
    context = InputTag(MLFLOW_DATASET_CONTEXT, "training")
    client.log_inputs(run_id, [DatasetInput(Dataset.from_dictionary(info.dataset), [context])])


@dataclass(frozen=True)
class TrainRequest:
    """What an executor needs to train one run: plain values, so it can travel."""

    run_id: str
    config: RunConfig
    info: SessionInfo
    placement: Placement
    resume: str | None = None  # a last.pt to continue from, into the same run (see resume)
    pruning: Pruning = Pruning()  # --prune: stop at a rung when the session's other runs do better


def slots_folder(info: SessionInfo) -> Path:
    """Where a session's workers share their training slots (devices.slot)."""
    return Path(info.workdir) / ".slots"


def train_into_run(request: TrainRequest, *, data: Path | None = None) -> None:
    """Train and record into an existing run, which ends FINISHED; a crash ends it
    FAILED with its traceback as an artifact, an interruption KILLED saying so; either
    way the exception propagates. `data`: the dataset yaml where it is on this machine
    (default: the session's)."""
    info, run_id, place = request.info, request.run_id, request.placement
    client = MlflowClient(info.tracking_uri)
    try:
        with tracking.RunRecorder(client, run_id) as recorder:
            amp = bool(request.config.values.get("amp", True)) and place.kind == "cuda"
            # A continued run keeps the device it was opened with.
            params = [] if request.resume else [Param("device", place.label)]
            tags = [RunTag("amp.check", str(info.amp_check))] if place.kind == "cuda" else []
            if params or tags:
                client.log_batch(run_id, params=params, tags=tags)
            callbacks = recorder.callbacks
            if request.pruning.on:  # its callbacks first: last.pt is made resumable again before its upload
                prune = pruner.Pruner(
                    client,
                    run_id,
                    experiment_id=info.experiment_id,
                    session_id=info.session_id,
                    pruning=request.pruning,
                    epochs=request.config.epochs,
                )
                callbacks = pruner.chain(prune.callbacks, callbacks)
            with slot(slots_folder(info), place.slots), tracking.system_metrics(run_id, info.tracking_uri):
                result = training.train(
                    request.config,
                    data=data or Path(info.data),
                    model=info.model_used,
                    project=Path(info.workdir),
                    threads=place.threads,
                    device=place.device,
                    dataloader_workers=place.dataloader_workers,
                    amp=amp,
                    amp_checked=info.amp_check,
                    callbacks=callbacks,
                    resume=Path(request.resume) if request.resume else None,
                )
            tags = {"amp": str(result.amp).lower()}
            if request.resume:  # the epoch ultralytics continued at, as its trainer says
                tags[TAG_RESUMED_AT] = str(result.start_epoch + 1)
            tags.update(early_stop_tags(result))
            peak = {} if result.peak_gpu_memory_mb is None else {"peak_gpu_memory_MiB": result.peak_gpu_memory_mb}
            recorder.finish(result, metrics=peak, tags=tags)
    except KeyboardInterrupt:
        client.set_tag(run_id, tracking.TAG_END, "interrupted (Ctrl-C or SIGTERM) during training")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.log_text(run_id, traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def example_image(data_yaml: Path) -> Path:
    """A real val image (checked by the session's preflight), for the model's input example."""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    folder = (data_yaml.parent / spec.get("path", ".") / spec["val"]).resolve()
    return min(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def early_stop_tags(result: training.TrainResult) -> dict[str, str]:
    """An early stop is a normal end: said on the run, so that its check expects the
    epochs that ran."""
    if result.stopped_early is None:
        return {}
    return {TAG_LAST_EPOCH: str(result.last_epoch), TAG_STOPPED_EARLY: result.stopped_early}


def expected_epochs(epochs: int, tags: dict[str, str]) -> int:
    """The epochs a run must have logged: `epochs`, or fewer where it stopped early."""
    last = tags.get(TAG_LAST_EPOCH)
    return int(last) if last and last.isdigit() and 0 < int(last) <= epochs else epochs


def check_run(client: MlflowClient, run_id: str, epochs: int, run=None) -> list[str]:
    """What a finished experiment must show, read back from the server; [] if complete.
    A pruned run (--prune) is complete up to the rung it stopped at.
    `run`: the run as just read (a search result), saving one call."""
    run = run or client.get_run(run_id)
    stopped = pruner.pruned(run)
    epochs = stopped.rung if stopped else epochs
    # Listed at the run's artifact location itself: `client.list_artifacts` asks for the
    # run again and, for a folder, also lists its logged models (4x the time).
    artifacts = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    with ThreadPoolExecutor(4) as pool:  # independent reads: at once
        history = pool.submit(client.get_metric_history, run_id, "mAP50-95")
        listings = [pool.submit(artifacts.list_artifacts, folder) for folder in (None, "plots", "weights")]
        steps = sorted(m.step for m in history.result())
        present = {a.path for listing in listings for a in listing.result()}
    problems = []
    ran = expected_epochs(epochs, run.data.tags)
    if steps != list(range(1, ran + 1)):
        stopped = f" (stopped early: {run.data.tags.get(TAG_STOPPED_EARLY)})" if ran < epochs else ""
        problems.append(f"mAP50-95 logged at epochs {steps}, expected 1..{ran}{stopped}")
    if run.info.status != "FINISHED":
        problems.append(f"status {run.info.status}, expected FINISHED")
    metrics = run.data.metrics
    for name in tracking.FINAL:
        value = metrics.get(f"best/{name}")
        if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"best/{name} = {value}, expected a finite value in [0, 1]")
    missing = [a for a in REQUIRED_ARTIFACTS if a not in present]
    if missing:
        problems.append(f"artifacts missing: {', '.join(missing)}")
    return problems
