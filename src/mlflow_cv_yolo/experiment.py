"""One grid configuration as one tracked MLflow run, and the session-wide
settings every run shares (decided once, on the controller)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from . import tracking, training
from .grid import RunConfig

ENV = "CV_YOLO_SUITE"
# A server with S3 artifacts offers clients presigned S3 URLs for downloads; the
# S3 endpoint it signs for (e.g. http://s3:9000 inside compose) is often not
# reachable from the client. Downloads go through the server instead.
CLIENT_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": os.environ.get("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD",
                                                                       "false")}
REQUIRED_ARTIFACTS = ("results.csv", "args.yaml", "plots/results.png", "plots/confusion_matrix.png",
                      "plots/BoxPR_curve.png", "weights/best.pt", "weights/last.pt")


@dataclass(frozen=True)
class Suite:
    """Handed from the controller to xdist workers through one environment variable."""

    session_id: str
    experiment: str
    tracking_uri: str
    stack_kind: str
    data: str
    model_requested: str
    model_used: str
    pretrained: bool
    model_note: str
    workdir: str
    parent_run_id: str | None = None
    git_commit: str | None = None
    dataset_md5: str | None = None
    dataset_dirty: bool = False
    dataset_source: str | None = None  # where `dvc pull` fetches it (the DVC remote URL)
    dataset_lock_commit: str | None = None

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(dataclasses.asdict(self)), "MLFLOW_TRACKING_URI": self.tracking_uri,
                **CLIENT_ENV}

    @classmethod
    def from_env(cls) -> "Suite | None":
        raw = os.environ.get(ENV)
        return cls(**json.loads(raw)) if raw else None


def versions() -> dict[str, str]:
    import torch
    import ultralytics

    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__.split("+")[0],
            "mlflow": mlflow.__version__}


def run_params(config: RunConfig, suite: Suite) -> dict[str, str]:
    data = Path(suite.data)
    return {**{k: str(v) for k, v in config.values.items()},
            "model": suite.model_requested, "model_used": suite.model_used, "data": str(data),
            "data_yaml_sha256": hashlib.sha256(data.read_bytes()).hexdigest()[:16],
            **{f"version.{k}": v for k, v in versions().items()}}


def run_tags(config: RunConfig, suite: Suite) -> dict[str, str]:
    tags = {tracking.TAG_SESSION: suite.session_id, tracking.TAG_KIND: "grid", "suite.test_id": config.id,
            "suite.config": config.config_id, "suite.stack": suite.stack_kind,
            "pretrained": str(suite.pretrained).lower(), "dataset.dirty": str(suite.dataset_dirty).lower()}
    if suite.git_commit:
        tags["mlflow.source.git.commit"] = suite.git_commit
    return tags


def example_image(data_yaml: Path) -> Path:
    """A real val image, for the model's input example."""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    folder = (data_yaml.parent / spec.get("path", ".") / spec["val"]).resolve()
    return min(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def run_one(config: RunConfig, suite: Suite, threads: int) -> str:
    """Train and record `config`; returns the MLflow run id. A crash ends the run
    FAILED with its traceback as an artifact, then propagates."""
    mlflow.set_tracking_uri(suite.tracking_uri)
    experiment = mlflow.set_experiment(suite.experiment)
    client = MlflowClient(suite.tracking_uri)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=config.id,
                          parent_run_id=suite.parent_run_id, tags=run_tags(config, suite)) as active:
        try:
            mlflow.log_params(run_params(config, suite))
            if suite.dataset_md5:
                from .lineage import dataset_input

                mlflow.log_input(dataset_input(Path.cwd(), suite.dataset_md5, suite.dataset_source,
                                               suite.dataset_lock_commit), context="training")
            logger = tracking.EpochLogger(client, active.info.run_id)
            result = training.train(config, data=Path(suite.data), model=suite.model_used,
                                    project=Path(suite.workdir), threads=threads, callbacks=logger.callbacks)
            v = versions()
            tracking.log_results(result, example_image=example_image(Path(suite.data)), imgsz=config.imgsz,
                                 pip_requirements=[f"ultralytics=={v['ultralytics']}", f"torch=={v['torch']}",
                                                   f"mlflow=={v['mlflow']}", "pandas", "pillow"])
        except BaseException:
            mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
            raise
        return active.info.run_id


def check_run(client: MlflowClient, run_id: str, epochs: int) -> list[str]:
    """What a finished experiment must show, read back from the server; [] if complete."""
    problems = []
    history = client.get_metric_history(run_id, "mAP50-95")
    steps = sorted(m.step for m in history)
    if steps != list(range(1, epochs + 1)):
        problems.append(f"mAP50-95 logged at epochs {steps}, expected 1..{epochs}")
    run = client.get_run(run_id)
    metrics = run.data.metrics
    for name in tracking.FINAL:
        value = metrics.get(f"best/{name}")
        if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"best/{name} = {value}, expected a finite value in [0, 1]")
    present = {a.path for a in client.list_artifacts(run_id)}
    for folder in ("plots", "weights"):
        present |= {a.path for a in client.list_artifacts(run_id, folder)}
    missing = [a for a in REQUIRED_ARTIFACTS if a not in present]
    if missing:
        problems.append(f"artifacts missing: {', '.join(missing)}")
    models = tracking.logged_models(client, run_id)
    if [m.name for m in models] != ["model"]:
        problems.append(f"logged models {[m.name for m in models]}, expected one named 'model'")
    return problems
