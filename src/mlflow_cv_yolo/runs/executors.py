"""Where a test's training runs: one small strategy object, so that the test does not
know which. `LocalExecutor` trains in the test's own process (an xdist worker, or
the only process); `RayExecutor` submits it as a Ray task and waits for it."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.data.node_cache import DataSource, locate
from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.runs.training_run import TrainRequest, train_into_run
from mlflow_cv_yolo.train import devices, interrupts
from mlflow_cv_yolo.train.devices import Placement

TAG_RAY_NODE = "ray.node"
TAG_RAY_PID = "ray.worker_pid"  # the worker process training the run now (a retry changes it)
# A worker or node that dies mid-task is tried again this often; each try trains into
# the same run, whose epochs are logged once (tracking.RunRecorder).
MAX_RETRIES = 3


class LocalExecutor:
    def device(self, placement: Placement) -> str:
        """Where a run placed here trains (for its reuse key)."""
        return placement.device

    def run(self, request: TrainRequest) -> None:
        train_into_run(request)


def make_executor(settings: dict, data: DataSource | None = None):
    """The executor a worker builds from what the controller handed it (SessionInfo.executor)."""
    if settings.get("kind", "local") == "local":
        return LocalExecutor()
    return RayExecutor(
        settings["address"], cpus_per_run=settings["cpus_per_run"], gpus_per_run=settings["gpus_per_run"], data=data
    )


def _train_task(request: TrainRequest, data: DataSource) -> None:
    """One run's training, inside a Ray worker: on the GPU Ray gave it (Ray sets
    CUDA_VISIBLE_DEVICES, so it is device 0 here), with as many threads as CPUs."""
    import ray

    info = request.info
    os.environ.update(info.client_env)
    client = MlflowClient(info.tracking_uri)
    client.set_tag(request.run_id, TAG_RAY_NODE, ray.util.get_node_ip_address() or socket.gethostname())
    client.set_tag(request.run_id, TAG_RAY_PID, str(os.getpid()))
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave the task: they are cuda:0.. here.
    label = devices.select("0" if ray.get_gpu_ids() else devices.CPU, devices.probe())[0]
    placement = Placement(label.split()[0], label, threads=request.placement.threads, dataloader_workers=0)
    try:
        data_yaml = locate(data)
    except Exception as exc:
        client.set_tag(request.run_id, tracking.TAG_END, f"no data on node {socket.gethostname()}: {exc}")
        client.set_terminated(request.run_id, "FAILED")
        raise
    train_into_run(dataclasses.replace(request, placement=placement), data=data_yaml)


class RayExecutor:
    """Each run a Ray task on the cluster at `address`, asking for `cpus_per_run` CPUs
    and `gpus_per_run` GPUs. The run exists before the task (the test opened it); the
    task logs into it. A Python exception is not retried (the run ends FAILED with its
    traceback, as locally); a dead worker or node is (MAX_RETRIES). Ctrl-C cancels the
    task and ends the run KILLED."""

    def __init__(self, address: str, *, cpus_per_run: float, gpus_per_run: float, data: DataSource | None):
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.data = data
        self._task = None

    def device(self, placement: Placement) -> str:
        """Where a run trains: on a GPU Ray gives it, or a CPU, whatever this process has."""
        return "cuda" if self.gpus_per_run else devices.CPU

    def _remote(self, client_env: dict[str, str]):
        if self._task is None:
            import ray

            from mlflow_cv_yolo.train.ray_cluster import connect

            connect(self.address, client_env)
            self._task = ray.remote(_train_task)
        return self._task

    def run(self, request: TrainRequest) -> None:
        import ray
        from ray.exceptions import RayTaskError

        task = self._remote(request.info.client_env)
        threads = max(1, math.ceil(self.cpus_per_run))  # the task sets its device itself (_train_task)
        request = dataclasses.replace(request, placement=Placement("cpu", "cpu", threads, 0))
        data = self.data or DataSource(request.info.data, Path(request.info.data).read_text())
        ref = task.options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
            name=f"train {request.config.id}",
        ).remote(request, data)
        try:
            while not ray.wait([ref], timeout=1.0)[0]:
                interrupts.check()  # a Ctrl-C that a callback swallowed
            ray.get(ref)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):  # the cluster went first (a session-started instance stopping)
                ray.cancel(ref, force=True)
            _end(request, "KILLED", "interrupted (Ctrl-C or SIGTERM): its Ray task was cancelled")
            raise
        except RayTaskError:
            raise  # the task ended its run FAILED, with the traceback
        except ray.exceptions.RayError as exc:
            _end(request, "FAILED", f"its Ray task failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")
            raise


def _end(request: TrainRequest, status: str, reason: str) -> None:
    client = MlflowClient(request.info.tracking_uri)
    if client.get_run(request.run_id).info.status == "RUNNING":
        client.set_tag(request.run_id, tracking.TAG_END, reason)
        client.set_terminated(request.run_id, status)
