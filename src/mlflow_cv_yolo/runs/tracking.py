"""What a grid run records in MLflow, reading a session's runs back, the
experiment they go into, and links to them in MLflow's UI.

Failure policy, the same for every call here: a tracking call that fails raises,
and the run it belongs to fails. A run whose records are incomplete is not an
experiment result, so nothing is retried or swallowed."""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

import mlflow
from mlflow.entities import LifecycleStage, Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.detector import encode_images, signature
from mlflow_cv_yolo.runs.record import RunRecord
from mlflow_cv_yolo.train.training import PLOTS, TrainResult

PACKAGE = Path(__file__).resolve().parents[1]  # mlflow_cv_yolo/

# ultralytics' metric keys -> the stable names runs are compared by.
METRIC_NAMES = {
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/mAP50(B)": "mAP50",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "val/box_loss": "val/box_loss",
    "val/cls_loss": "val/cls_loss",
    "val/dfl_loss": "val/dfl_loss",
}
FINAL = ("mAP50-95", "mAP50", "precision", "recall")
TAG_SESSION = "suite.session"
TAG_KIND = "suite.kind"  # "grid" for a configuration's run, "session" for the parent
TAG_TEST = "suite.test_id"
TAG_PRUNED = "suite.pruned"  # where successive halving stopped a run (runs/pruner.py)
TAG_LAST_EPOCH = "suite.last_epoch"  # a run that stopped before its last epoch: where
TAG_STOPPED_EARLY = "suite.stopped_early"  # and why (patience, a time limit)
TAG_END = "suite.end_reason"  # why a run ended other than FINISHED by its own code
# The experiment's kind, which MLflow 3's UI otherwise guesses (GenAI when it
# sees no training runs). 3.17's UI picks the page it opens by its own GenAI /
# Model training switch instead: see _TRAINING_MODE.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description the UI shows and edits
DESCRIPTION = (
    "YOLOv8n experiment grid (mlflow-cv-yolo): one session run per pytest session, "
    "one child run per grid configuration with per-epoch metrics and weights; "
    "the promoted run also has a pyfunc model."
)


def rename(metrics: dict[str, float]) -> dict[str, float]:
    return {METRIC_NAMES[k]: float(v) for k, v in metrics.items() if k in METRIC_NAMES}


class RunRecorder:
    """Records one training into an MLflow run as it goes, through ultralytics callbacks:
    every epoch's metrics (step = epoch, 1-based), then ultralytics' files (results,
    plots, weights) and the best weights' metrics (`finish`).

    The trainer does not wait on the server: each epoch's metrics and each file go in
    the background, each file as soon as ultralytics will not write it again (the
    weights once `final_eval` has stripped them, before it validates best.pt; that
    validation's plots when it ends). `finish` uploads the rest, then waits for
    everything and raises what failed (the failure policy above). Leaving the `with`
    block waits for what is in flight, also when training failed, so the epochs done
    stay recorded and no upload outlives its run.

    Epochs the run already holds are not logged again: a run trained once more into
    the same run id (a retried task, a resumed run) keeps each step once."""

    UPLOADS = 4  # calls at once: one after another, they were most of a run's tracking time

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self._epoch_done = False
        self._trainer = None
        self._logged: set[int] | None = None
        self._epochs: list[Future] = []
        self._uploads: dict[Path, Future] = {}
        # Not MLflow's async logging (log_batch(synchronous=False)): its queue polls once a
        # second, and set_terminated waited up to that second for it to shut down.
        self._pool = ThreadPoolExecutor(self.UPLOADS, thread_name_prefix="run-recorder")

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)

    @property
    def callbacks(self) -> dict:
        return {
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_val_start": self.on_val_start,
            "on_val_end": self.on_val_end,
        }

    def on_train_epoch_end(self, trainer) -> None:
        self._epoch_done = True
        self._trainer = trainer

    def on_fit_epoch_end(self, trainer) -> None:
        # ultralytics fires this event once more after training, for best.pt's
        # final validation; only a finished training epoch is an epoch.
        if not self._epoch_done:
            return
        self._epoch_done = False
        if self._logged is None:
            self._logged = {m.step for m in self.client.get_metric_history(self.run_id, "mAP50-95")}
        step = trainer.epoch + 1
        if step in self._logged:
            return
        self._logged.add(step)
        values = {**rename(trainer.metrics), **trainer.label_loss_items(trainer.tloss, prefix="train"), **trainer.lr}
        now = int(time.time() * 1000)
        self._epochs.append(
            self._pool.submit(
                self.client.log_batch, self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()]
            )
        )

    def _final_validation(self) -> bool:
        # An epoch's validation comes between its train and fit ends; final_eval's after both.
        return self._trainer is not None and not self._epoch_done

    def on_val_start(self, validator) -> None:
        if self._final_validation():  # all but the plots are final
            self._upload([(path, folder) for path, folder in self._files() if folder != "plots"], only_existing=True)

    def on_val_end(self, validator) -> None:
        if self._final_validation():  # its plots are written; results.png comes after
            self._upload(
                [(path, folder) for path, folder in self._files() if folder == "plots" and path.name != "results.png"],
                only_existing=True,
            )

    def _files(self, result: TrainResult | None = None) -> list[tuple[Path, str | None]]:
        """ultralytics' files a run keeps, with the artifact folder of each."""
        save_dir, best, last = (
            (result.save_dir, result.best, result.last)
            if result
            else (self._trainer.save_dir, self._trainer.best, self._trainer.last)
        )
        return [
            (save_dir / "results.csv", None),
            (save_dir / "args.yaml", None),
            *[(save_dir / name, "plots") for name in PLOTS],
            (best, "weights"),
            (last, "weights"),
        ]

    def _upload(self, files: list[tuple[Path, str | None]], *, only_existing: bool = False) -> None:
        for path, folder in files:
            if path not in self._uploads and (path.exists() or not only_existing):
                self._uploads[path] = self._pool.submit(self.client.log_artifact, self.run_id, str(path), folder)

    def finish(
        self, result: TrainResult, *, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        """The best weights' metrics (and the caller's `metrics` and `tags`, in the same
        call), every file not uploaded yet; then waits for all of it."""
        best = rename(result.best_metrics)
        now = int(time.time() * 1000)
        values = [Metric(f"best/{k}", best[k], now, 0) for k in FINAL if k in best]
        values += [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        self.client.log_batch(self.run_id, metrics=values, tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        # Every file but a plot must be there: a missing one fails the run, as its upload raises.
        self._upload([(path, folder) for path, folder in self._files(result) if folder != "plots" or path.exists()])
        for done in [*self._epochs, *self._uploads.values()]:
            done.result()


def log_results(client: MlflowClient, run_id: str, result: TrainResult) -> None:
    """A finished training's results and files, recorded after the fact in one go.
    The loadable model is logged once, for the promotion candidate (`log_model`)."""
    with RunRecorder(client, run_id) as recorder:
        recorder.finish(result)


def versions() -> dict[str, str]:
    # From the installed distributions: importing torch and ultralytics only to ask
    # cost a run most of a second where they were not imported yet.
    from mlflow_cv_yolo.runs.key import library_versions

    return {**library_versions(), "mlflow": mlflow.__version__}


def log_model(run_id: str, weights: Path, *, example_image: Path, imgsz: int) -> str:
    """Log `weights` as the pyfunc model `model` of run `run_id` (not reopening the
    run); returns the logged model's id. MLflow loads it back and predicts on its
    input example while logging, and only warns when that fails: promotion checks."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        # The wrapper's module travels with the model (as mlflow_cv_yolo.detector,
        # the name it is pickled under), so it loads where only ultralytics and
        # mlflow are installed; the rest of the package stays behind.
        package = Path(tmp) / "mlflow_cv_yolo"
        package.mkdir()
        for name in ("__init__.py", "detector.py"):
            shutil.copy(PACKAGE / name, package / name)
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(PACKAGE / "model_code.py"),
            artifacts={"weights": str(weights)},
            code_paths=[str(package)],
            signature=signature(imgsz),
            input_example=(encode_images([example_image]), {"conf": 0.25, "imgsz": imgsz}),
            pip_requirements=[f"{name}=={version}" for name, version in versions().items()] + ["pandas", "pillow"],
        )
    return info.model_id


def ensure_experiment(client: MlflowClient, name: str, description: str = DESCRIPTION) -> str:
    """The id of experiment `name`, created if missing, with the kind and a
    description set where they are missing (a description someone wrote stays)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={KIND_TAG: KIND, NOTE_TAG: description})
        except MlflowException as exc:  # another session created it meanwhile
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise MlflowException.invalid_parameter_value(
            f"experiment {name!r} (id {experiment.experiment_id}) is deleted: restore it with `mlflow experiments "
            f"restore --experiment-id {experiment.experiment_id}` or choose another experiment name"
        )
    for key, value in ((KIND_TAG, KIND), (NOTE_TAG, description)):
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _ui_base(tracking_uri: str) -> str:
    if not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(f"tracking URI {tracking_uri!r}: no MLflow UI behind it (links need an http(s) server)")
    return tracking_uri.rstrip("/")


# MLflow 3.17's UI opens an experiment in its GenAI mode (overview, traces)
# unless the URL or the browser's last choice says otherwise; the experiment's
# kind tag does not decide it. Every link says so itself.
_TRAINING_MODE = {"workflowType": "machine_learning"}


def runs_view_url(
    tracking_uri: str, experiment_id: str, *, search: str | None = None, order_by: str | None = None
) -> str:
    """The experiment's runs table in MLflow's UI. `search` is a run filter such as
    "tags.`suite.session` = '...'"; `order_by` a column such as "metrics.`best/mAP50-95`",
    highest first (sorting also lists child runs flat instead of folded under their parent)."""
    query = dict(_TRAINING_MODE)
    if search:
        query["searchFilter"] = search
    if order_by:
        query.update(orderByKey=order_by, orderByAsc="false")
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page (overview, metrics, artifacts) in MLflow's UI."""
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{urlencode(_TRAINING_MODE)}"


def logged_models(client: MlflowClient, run_id: str) -> list:
    """MLflow 3 keeps logged models beside the run's artifacts, as LoggedModel entities."""
    run = client.get_run(run_id)
    return list(client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"))


def _record(run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name,
        config_id=run.data.tags.get("suite.config", ""),
        status=run.info.status,
        start_time=run.info.start_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        pruned=run.data.tags.get(TAG_PRUNED),
    )


def reused_runs(client: MlflowClient, reused: dict[str, str]) -> list[RunRecord]:
    """Runs of earlier sessions that this one reused (run id -> the session that trained
    it), as records of this session's ranking; their own tags are left as they are."""
    import dataclasses

    return [
        dataclasses.replace(_record(client.get_run(run_id)), reused_from=session) for run_id, session in reused.items()
    ]


def session_runs(client: MlflowClient, experiment_id: str, session_id: str) -> list[RunRecord]:
    """The grid runs of one session, read back from the tracking server."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SESSION}` = '{session_id}' and tags.`{TAG_KIND}` = 'grid'",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    return [_record(r) for r in runs]


def histories(client: MlflowClient, runs: list[RunRecord], names: tuple[str, ...]) -> dict[str, dict]:
    """run_id -> metric -> [(step, value)], for the report's curves (read a few at once)."""
    with ThreadPoolExecutor(8) as pool:
        read = {(r.run_id, n): pool.submit(client.get_metric_history, r.run_id, n) for r in runs for n in names}
        return {
            r.run_id: {
                n: [(m.step, m.value) for m in read[r.run_id, n].result() if math.isfinite(m.value)] for n in names
            }
            for r in runs
        }


def end_running(
    client: MlflowClient,
    experiment_id: str,
    session_id: str,
    *,
    status: str,
    reason: str,
    test_id: str | None = None,
    kinds: tuple[str, ...] = ("grid", "session"),
) -> list[str]:
    """End a session's runs still RUNNING (of one test, if given) with `status` and a
    tag saying why: after a crash, an interruption or a killed controller nothing may
    stay RUNNING forever. Returns their run ids."""
    query = f"tags.`{TAG_SESSION}` = '{session_id}' and attributes.status = 'RUNNING'"
    if test_id is not None:
        query += f" and tags.`{TAG_TEST}` = '{test_id}'"
    ended = []
    for run in client.search_runs([experiment_id], query, max_results=1000):
        if run.data.tags.get(TAG_KIND) not in kinds:
            continue
        client.set_tag(run.info.run_id, TAG_END, reason)
        client.set_terminated(run.info.run_id, status)
        ended.append(run.info.run_id)
    return ended


# Short runs (seconds on a GPU) get samples too; MLflow's default is one per 10 s.
SYSTEM_METRICS_INTERVAL = 2.0


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str):
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, and
    `system/gpu_*` where nvidia-ml-py finds a GPU) for a run by id, while the block
    runs. Without psutil MLflow has no monitor: the run is tagged so and trains on.
    The monitor is MLflow's own and best effort (it logs its failures as warnings)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:  # psutil is not installed
        MlflowClient(tracking_uri).set_tag(run_id, "system_metrics", f"not recorded: {exc}")
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
