"""A session's start-up, like xdist's NodeManager: every input checked, Ray and the
stack started, the weights resolved, the data put on the stack, the session's parent
run opened and the reuse planned -> the `SessionInfo` each worker gets. It owns what
it started until `stop()`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo import preflight
from mlflow_cv_yolo.data.node_cache import DataSource
from mlflow_cv_yolo.errors import InputError, StackError
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.runs import reuse, tracking, training_run
from mlflow_cv_yolo.runs.executors import make_executor
from mlflow_cv_yolo.settings import Settings
from mlflow_cv_yolo.stack import ServiceError, StackInfo, choose, make_stack
from mlflow_cv_yolo.stack.claim import StackInUse, claim
from mlflow_cv_yolo.train import devices, ray_cluster, weights
from mlflow_cv_yolo.train.grid import RunConfig


def dvc_remote(s3) -> str:
    """Where a session's stack keeps the DVC remote: in its own S3."""
    return f"s3://{s3.bucket}/dvc"


def git_commit(root: Path) -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


class Startup:
    def __init__(
        self,
        settings: Settings,
        grid: list[RunConfig],
        session_id: str,
        *,
        log: Callable[[str], None],
        on_stack_failure: Callable[[str], None],
        selected: int | None = None,
    ):
        self.settings = settings
        self.grid = grid
        self.selected = len(grid) if selected is None else selected  # tests left after -k, -m, node ids
        self.session_id = session_id
        self.log = log
        self.on_stack_failure = on_stack_failure
        self.stack = None
        self.stack_info: StackInfo | None = None
        self.info: SessionInfo | None = None
        self.monitor = None
        self.ray: ray_cluster.RayCluster | None = None
        self.claim = None
        self.found: devices.Found | None = None
        self.devices: tuple[str, ...] = ()
        # xdist workers to start (devices.workers_to_start); 0: the tests run in this
        # process, every configuration reusing a finished run (reuse.plan)
        self.workers = settings.workers
        self.state_dir: Path | None = None
        self.ready_in = self.state_shown = ""

    def run(self) -> SessionInfo:
        """Raises InputError (nothing started) or StackError (what started is stopped)."""
        s = self.settings
        kind, reason = choose(s.stack)
        data_state = self._check_inputs(kind)
        choice = self._required_weights()
        self.state_dir = Path(tempfile.mkdtemp(prefix="cv-yolo-stack-")) if s.fresh_stack else s.stack_dir
        self._start_ray(kind)
        self.stack = make_stack(kind, self.state_dir, log=self.log, **s.images)
        if kind != "external":  # a shared external server has no folder of ours
            try:
                self.claim = claim(self.stack.state_dir, session=self.session_id, what="an experiment session")
            except StackInUse as exc:
                raise InputError(f"--stack-dir: {exc}") from None
        started = time.monotonic()
        # Looking for the weights (maybe downloading them) and AMP's check overlap the stack's start.
        with ThreadPoolExecutor(2) as pool:
            model = pool.submit(lambda: choice or weights.resolve(self.grid[0].model))
            amp = pool.submit(self._amp_check)
            try:
                self.stack_info = self.stack.start(reason)
            except (ServiceError, RuntimeError) as exc:
                raise StackError(f"--stack {kind}: {exc}") from None
            choice = model.result()
            amp_check = amp.result()
        ready = f"{time.monotonic() - started:.1f} s"
        # This process's MLflow calls by URI (models:/..., runs:/...) resolve on this session's server.
        mlflow.set_tracking_uri(self.stack_info.tracking_uri)
        # DVC's push of the dataset (about 2 s) overlaps the session's first tracking calls
        # and the reuse lookups; it has ended when start() returns, before any run needs it.
        with ThreadPoolExecutor(1) as pool:
            pushed = pool.submit(self._push_data, data_state)
            self._open(kind, choice, amp_check, self._lineage(data_state))
            pushed.result()
        self.ready_in, self.state_shown = (
            ready,
            (f"{self.state_dir} (throwaway)" if s.fresh_stack else str(self.stack.state_dir)),
        )
        self._start_monitor(kind)
        return self.info

    def _open(self, kind: str, choice: weights.ModelChoice, amp_check: str | None, lineage: dict) -> None:
        """The session's parent run and SessionInfo, and the reuse plan."""
        s = self.settings
        client = MlflowClient(self.stack_info.tracking_uri)
        try:
            experiment_id = tracking.ensure_experiment(client, s.experiment)
        except MlflowException as exc:
            raise InputError(f"--experiment {s.experiment}: {exc.message}") from None
        self._end_dead_session(client, experiment_id)
        commit = git_commit(s.root)
        parent = client.create_run(
            experiment_id,
            run_name=f"session-{self.session_id}",
            tags={
                tracking.TAG_SESSION: self.session_id,
                tracking.TAG_KIND: "session",
                "suite.stack": kind,
                "pretrained": str(choice.pretrained).lower(),
                **({"mlflow.source.git.commit": commit} if commit else {}),
            },
        )
        self.info = SessionInfo(
            session_id=self.session_id,
            experiment=s.experiment,
            experiment_id=experiment_id,
            tracking_uri=self.stack_info.tracking_uri,
            stack_kind=kind,
            data=str(s.data),
            model_requested=choice.requested,
            model_used=choice.used,
            pretrained=choice.pretrained,
            model_note=choice.note,
            workdir=str(s.runs_dir / self.session_id),
            parent_run_id=parent.info.run_id,
            git_commit=commit,
            devices=self.devices,
            amp_check=amp_check,
            executor=self._executor(lineage),
            **lineage,
        )
        self.info = dataclasses.replace(self.info, data_digest=reuse.data_digest(self.info))
        if self.info.dataset_md5:
            self.info = dataclasses.replace(self.info, dataset=training_run.dataset_fields(self.info))
            # Recorded once here, before any worker: the tracking store creates a dataset on
            # first use, and workers creating it at once collide on its unique key.
            training_run.log_dataset(client, parent.info.run_id, self.info)
        self._plan_reuse(client)

    def _plan_reuse(self, client: MlflowClient) -> None:
        """Look up the grid's reusable runs (reuse.plan). A session with nothing
        to train starts no worker: a worker's start (its imports, its connection) costs
        more than checking every reused run here."""
        if self.settings.rerun:
            return
        placement = devices.place(0, max(1, self.workers), self.devices, devices.cpu_count())
        device = make_executor(self.info.executor).device(placement)
        reusable, pruned = reuse.plan(client, self.grid, self.info, device=device)
        continued = () if self.settings.pruning.on else pruned
        self.info = dataclasses.replace(self.info, reusable=reusable, continued=continued)
        if len(self.info.reusable) == len(self.grid):
            self.workers = 0

    def _check_inputs(self, kind: str):
        """Everything that can be refused before a process starts or a file is written."""
        s = self.settings
        stack_dir = None if s.fresh_stack or s.stack == "external" else s.stack_dir
        preflight.check_output_folders(s.reports_dir, s.runs_dir, stack_dir)
        self.found = devices.probe()
        try:
            self.devices = devices.select(s.device, self.found)
        except devices.DeviceError as exc:
            raise InputError(str(exc)) from None
        ray_cluster.check_settings(s.executor)
        if s.executor.kind == "local":  # Ray places its tasks itself: every worker only waits on one
            self.workers = devices.workers_to_start(s.workers, self.devices, devices.cpu_count())
        self.workers = min(self.workers, self.selected)  # a worker beyond the selected tests would only wait
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if kind == "external":
            if not uri:
                raise InputError("--stack external: set MLFLOW_TRACKING_URI to the tracking server's URL")
            preflight.check_tracking_uri(uri)
        data_state = None
        if s.default_data:
            from mlflow_cv_yolo.data import lineage  # DVC is slow to import; only the default dataset needs it

            try:
                lineage.ensure_built(s.root, log=self.log)
            except lineage.LineageError as exc:
                raise InputError(str(exc)) from None
            data_state = lineage.check_dataset(s.root, lineage.DEFAULT_OUT)
            if not data_state.clean and not s.allow_dirty_data:
                raise InputError(
                    f"{lineage.DEFAULT_OUT} differs from dvc.lock: {'; '.join(data_state.problems)}. "
                    "Run `dvc repro` (rebuild) or `dvc pull` (fetch the locked version), "
                    "or pass --allow-dirty-data to train on it anyway (runs are tagged dirty)"
                )
        preflight.check_dataset(s.data)
        preflight.check_slices(s.data)
        preflight.check_model(self.grid[0].model)
        return data_state

    def _amp_check(self) -> str | None:
        """ultralytics' AMP check, once for the session, where runs train on CUDA with AMP."""
        device = self.devices[0].split()[0]
        if not device.startswith("cuda") or not any(c.values.get("amp", True) for c in self.grid):
            return None
        from mlflow_cv_yolo.train import training

        return training.amp_check(device)

    def _required_weights(self) -> weights.ModelChoice | None:
        """With --require-pretrained, missing weights stop the session before anything starts."""
        if not self.settings.require_pretrained:
            return None
        try:
            return weights.resolve(self.grid[0].model, require_pretrained=True)
        except weights.WeightsError as exc:
            raise InputError(str(exc)) from None

    def _start_ray(self, kind: str) -> None:
        """--executor ray: start or join the cluster before the stack, so that one the
        tracking server cannot serve is refused before anything else starts."""
        if self.settings.executor.kind != "ray":
            return
        from mlflow_cv_yolo.handoff import CLIENT_ENV

        self.ray = ray_cluster.RayCluster(
            self.settings.executor, dict(CLIENT_ENV), self.state_dir / "ray", log=self.log
        )
        self.ray.start()
        self.ray.check_reachable(kind, os.environ.get("MLFLOW_TRACKING_URI"))

    def _executor(self, lineage: dict) -> dict:
        """What workers build their executor from (executors.make_executor)."""
        s = self.settings.executor
        if self.ray is None:
            return {"kind": "local"}
        data = Path(self.settings.data)
        s3 = self.stack_info.s3
        source = DataSource(yaml_path=str(data), yaml_text=data.read_text(), md5=lineage.get("dataset_md5"))
        if source.md5 and s3 is not None:
            from mlflow_cv_yolo.data import lineage as dvc_lineage

            out = self.settings.root / dvc_lineage.DEFAULT_OUT
            source = dataclasses.replace(
                source,
                folder=os.path.relpath(out, data.parent),
                remote_url=lineage.get("dataset_source"),
                endpoint_url=s3.endpoint_url,
                credential_path=str(s3.credentials_file),
            )
        if self.ray.other_machines and not source.fetchable:
            self.log(
                f"ray: nodes on other machines ({', '.join(self.ray.other_machines)}) cannot fetch {data} "
                "(no DVC remote on an S3 they reach): only nodes that share this file system can train"
            )
        return {
            "kind": "ray",
            "address": self.ray.address,
            "cpus_per_run": s.cpus_per_run,
            "gpus_per_run": s.gpus_per_run,
            "data": dataclasses.asdict(source),
        }

    def _lineage(self, state) -> dict:
        """Lineage fields for the SessionInfo; {} for a dataset given with --data."""
        if state is None:
            return {}
        from mlflow_cv_yolo.data import lineage

        s3 = self.stack_info.s3
        source = dvc_remote(s3) if s3 is not None else "dvc.lock (this stack has no S3 for a DVC remote)"
        return {
            "dataset_md5": state.md5,
            "dataset_dirty": not state.clean,
            "dataset_source": source,
            "dataset_lock_commit": lineage.lock_commit(self.settings.root),
        }

    def _push_data(self, state) -> None:
        """The stack's S3 becomes the DVC remote the lineage names, and gets the data."""
        s3 = self.stack_info.s3
        if state is None or s3 is None:
            return
        from mlflow_cv_yolo.data import lineage

        lineage.publish(
            self.settings.root,
            state,
            url=dvc_remote(s3),
            endpoint_url=s3.endpoint_url,
            credential_path=s3.credentials_file,
            log=self.log,
        )

    def _end_dead_session(self, client: MlflowClient, experiment_id: str) -> None:
        """A session that could not end its runs left its claim: its controller was
        killed (SIGKILL, OOM, a closed terminal), or its stack failed for good. End its
        RUNNING runs, saying so."""
        dead = self.claim.previous if self.claim else None
        if not dead or not dead.get("session"):
            return
        unfinished = dead.get("unfinished")
        if unfinished:
            why, said = f"session {dead['session']} could not end its runs: {unfinished}", "could not end its runs"
        else:
            why = f"session {dead['session']} died (its controller, pid {dead.get('pid')}, ended without stopping)"
            said = "was killed before it ended"
        ended = tracking.end_running(
            client,
            experiment_id,
            dead["session"],
            status="KILLED",
            reason=f"{why}; marked by session {self.session_id}",
        )
        if ended:
            self.log(f"session {dead['session']} {said}: marked its {len(ended)} RUNNING runs KILLED")

    def _start_monitor(self, kind: str) -> None:
        if kind == "external":
            return
        from mlflow_cv_yolo.stack.monitor import HealthMonitor

        self.monitor = HealthMonitor(self.stack, log=self.log, on_failure=self.on_stack_failure)
        self.monitor.start()

    def stop(self, *, left_unfinished: str | None = None) -> None:
        """Idempotent. `left_unfinished`: why the session could not end its runs; the
        claim then stays, saying so, for the next session on the folder."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self.ray is not None:
            self.ray.stop()
            self.ray = None
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        if self.claim is not None:
            if left_unfinished:
                self.claim.leave(left_unfinished)
            else:
                self.claim.release()
            self.claim = None
        if self.settings.fresh_stack and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
