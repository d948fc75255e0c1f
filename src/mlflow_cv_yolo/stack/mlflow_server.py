"""The `mlflow server` process: tracking and registry on a SQL store, artifacts
proxied by the server (clients need no S3 credentials), on 127.0.0.1."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .process import ServiceError, ServiceProcess, free_port, port_in_use


def health(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
        return response.status == 200


def artifacts_answer(url: str, timeout: float = 30.0) -> bool:
    """The artifact proxy lists the bucket's top folder: the server reaches its S3.
    The server makes its S3 client at the first such request (0.3 s, and 1 s for
    the first run's uploads when six came at once): made here, no run waits for it."""
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow-artifacts/artifacts", timeout=timeout) as response:
        return response.status == 200


class MLflowServer:
    """`mlflow server` (a leader that runs uvicorn as its child). The backend URI,
    which holds the database password, reaches it in the environment, never in argv."""

    name = "mlflow"

    def __init__(
        self,
        workdir: Path,
        *,
        backend_uri: str,
        artifacts_destination: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log: Callable[[str], None] = print,
    ):
        self.workdir = Path(workdir).absolute()
        self.backend_uri = backend_uri
        self.artifacts_destination = artifacts_destination
        self.env = env or {}
        self.port = port
        self.log = log
        self.process: ServiceProcess | None = None

    def __repr__(self) -> str:
        return f"MLflowServer({self.workdir}, port={self.port})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **self.env,
            "MLFLOW_BACKEND_STORE_URI": self.backend_uri,
            # MLflow 3.17 otherwise starts a job runner (7 huey consumers) for GenAI jobs.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.process = ServiceProcess("mlflow", [], self.workdir, env=env, log=self.log)
        self.process.reap_leftover()
        self.port = self.port or free_port()
        if port_in_use(self.port):
            raise ServiceError(f"mlflow: port {self.port} on 127.0.0.1 is already taken")
        mlflow = Path(sys.executable).with_name("mlflow")
        # The host-check security middleware stays on: binding 127.0.0.1 lets only
        # localhost Host headers in, which is what every client here sends.
        self.process.argv = [
            str(mlflow) if mlflow.exists() else "mlflow",
            "server",
            "--artifacts-destination",
            self.artifacts_destination,
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.process.start()
        self.process.wait_ready(lambda: health(self.url) and artifacts_answer(self.url), timeout=timeout)
        return self.url

    def alive(self) -> bool:
        # The leader waits on uvicorn and exits with it: a killed uvicorn shows here too.
        return self.process is not None and self.process.running and port_in_use(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def require_reachable(url: str) -> None:
    """For an external server: one clear line when nothing answers at `url`."""
    try:
        health(url, timeout=5)
    except Exception as exc:
        raise ServiceError(f"MLFLOW_TRACKING_URI={url}: no MLflow server answers at {url}/health ({exc})") from None
