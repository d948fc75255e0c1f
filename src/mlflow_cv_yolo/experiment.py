"""One grid configuration as one tracked MLflow run (on a worker, or the only
process), and the checks of what the server recorded for it."""

from __future__ import annotations

import hashlib
import math
import traceback
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from . import tracking, training
from .grid import RunConfig
from .session_info import SessionInfo

REQUIRED_ARTIFACTS = ("results.csv", "args.yaml", "plots/results.png", "plots/confusion_matrix.png",
                      "plots/BoxPR_curve.png", "weights/best.pt", "weights/last.pt")


def versions() -> dict[str, str]:
    import torch
    import ultralytics

    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__.split("+")[0],
            "mlflow": mlflow.__version__}


def run_params(config: RunConfig, info: SessionInfo) -> dict[str, str]:
    data = Path(info.data)
    return {**{k: str(v) for k, v in config.values.items()},
            "model": info.model_requested, "model_used": info.model_used, "data": str(data),
            "data_yaml_sha256": hashlib.sha256(data.read_bytes()).hexdigest()[:16],
            **{f"version.{k}": v for k, v in versions().items()}}


def run_tags(config: RunConfig, info: SessionInfo) -> dict[str, str]:
    tags = {tracking.TAG_SESSION: info.session_id, tracking.TAG_KIND: "grid", tracking.TAG_TEST: config.id,
            "suite.config": config.config_id, "suite.stack": info.stack_kind,
            "pretrained": str(info.pretrained).lower(), "dataset.dirty": str(info.dataset_dirty).lower()}
    if info.git_commit:
        tags["mlflow.source.git.commit"] = info.git_commit
    return tags


def example_image(data_yaml: Path) -> Path:
    """A real val image, for the model's input example."""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    folder = (data_yaml.parent / spec.get("path", ".") / spec["val"]).resolve()
    return min(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def run_one(config: RunConfig, info: SessionInfo, threads: int) -> str:
    """Train and record `config`; returns the MLflow run id. A crash ends the run
    FAILED with its traceback as an artifact, an interruption ends it KILLED saying
    so; either way the exception propagates."""
    mlflow.set_tracking_uri(info.tracking_uri)
    client = MlflowClient(info.tracking_uri)
    with mlflow.start_run(experiment_id=info.experiment_id, run_name=config.id,
                          parent_run_id=info.parent_run_id, tags=run_tags(config, info)) as active:
        try:
            mlflow.log_params(run_params(config, info))
            if info.dataset_md5:
                from .lineage import dataset_input

                mlflow.log_input(dataset_input(Path.cwd(), info.dataset_md5, info.dataset_source,
                                               info.dataset_lock_commit), context="training")
            logger = tracking.EpochLogger(client, active.info.run_id)
            result = training.train(config, data=Path(info.data), model=info.model_used,
                                    project=Path(info.workdir), threads=threads, callbacks=logger.callbacks)
            v = versions()
            tracking.log_results(result, example_image=example_image(Path(info.data)), imgsz=config.imgsz,
                                 pip_requirements=[f"ultralytics=={v['ultralytics']}", f"torch=={v['torch']}",
                                                   f"mlflow=={v['mlflow']}", "pandas", "pillow"])
        except KeyboardInterrupt:
            mlflow.set_tag(tracking.TAG_END, "interrupted (Ctrl-C or SIGTERM) during training")
            mlflow.end_run("KILLED")
            raise
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
