"""The stack contract: a `Stack` starts services and hands back a `StackInfo` (an
MLflow tracking URL, and where metadata and artifacts live). Also what every
provider shares: per-stack credentials, the `Service` health protocol, and
MLflow on a MySQL + S3 backend."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pymysql

from .claim import forget_serving, record_serving
from .mlflow_server import MLflowServer
from .mysql import MySQLEndpoint
from .process import ServiceError
from .s3 import S3Endpoint

# Retries that bridge a service the health monitor restarts and give up in about a minute
# when the stack is gone (MLflow's defaults wait 4-16 min); see docs/faults.md.
CLIENT_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@runtime_checkable
class Service(Protocol):
    """A started service the health monitor can check and bring back."""

    name: str  # "s3 (moto)", as log lines call it

    @property
    def address(self) -> str:  # "127.0.0.1:PORT"
        ...

    def alive(self) -> bool:
        """Cheap and safe under full CPU load: no HTTP call with a short timeout."""
        ...

    def restart(self) -> None:
        """Start again on the same port and data; raises ServiceError if it cannot."""
        ...


@dataclass(frozen=True)
class StackInfo:
    kind: str
    tracking_uri: str
    reason: str
    # Printable endpoints only: secrets stay in mysql/s3 (whose reprs hide them) and
    # in the credentials file.
    endpoints: dict[str, str] = field(default_factory=dict)
    mysql: MySQLEndpoint | None = None
    s3: S3Endpoint | None = None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically: a reader (or a session
    killed halfway) sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_credentials() -> dict[str, str]:
    return {
        "mysql_user": "mlflow",
        "mysql_password": secrets.token_hex(16),
        "mysql_root_password": secrets.token_hex(16),
        "s3_access_key": "mlflow" + secrets.token_hex(4),
        "s3_secret_key": secrets.token_hex(20),
    }


def load_credentials(state_dir: Path) -> dict[str, str]:
    """Generated once per stack folder and kept beside its data, so a kept database
    and bucket can be opened again. A file from an earlier version gains the keys it
    lacks (the MariaDB root password); existing ones never change."""
    path = state_dir / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    missing = {k: v for k, v in _new_credentials().items() if k not in creds}
    if missing:
        creds.update(missing)
        write_private(path, json.dumps(creds))
    return creds


def write_aws_credentials(path: Path, access_key: str, secret_key: str) -> Path:
    """An AWS shared-credentials file for tools outside the stack (DVC's
    `credentialpath`), so that no key has to be written into the checkout."""
    write_private(path, f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n")
    return path


def _one_at_a_time(log: Callable[[str], None]) -> Callable[[str], None]:
    """Services starting together (Stack._run_together) log from their threads; print
    writes a line and its newline apart, so two lines could run into one."""
    lock = threading.Lock()

    def write(text: str) -> None:
        with lock:
            log(text)

    return write


class Stack:
    """Starts its services in order; `stop()` stops the started ones all at once,
    and a failing `start()` stops what it had already started. `state_dir` may be
    relative: it is made absolute here, before any service (mariadbd resolves a
    relative datadir against its basedir) sees it."""

    kind = ""

    def __init__(self, state_dir: Path, log: Callable[[str], None] = print):
        self.state_dir = Path(state_dir).absolute() / self.kind
        self.log = _one_at_a_time(log)
        self._started: list = []

    @property
    def services(self) -> list[Service]:
        """The started services that can report their health and be restarted."""
        return [s for s in self._started if isinstance(s, Service)]

    def _run(self, service):
        # Recorded first: a start that fails halfway (not ready in time) may leave a
        # process that stop() must still end.
        self._started.append(service)
        return service.start()

    def _run_together(self, *services) -> list:
        """Start independent services at once (the database and S3 don't wait for
        each other); if one fails, the others still finish starting and are recorded,
        so that stop() stops them. A Ctrl-C meanwhile waits for them too: a thread
        still starting a service would record it after stop() had run."""
        with ThreadPoolExecutor(len(services)) as pool:
            futures = [pool.submit(self._run, service) for service in services]
            try:
                wait(futures)
            except BaseException:
                wait(futures)
                raise
        return [future.result() for future in futures]

    def start(self, reason: str = "") -> StackInfo:
        try:
            info = self._start(reason)
        except BaseException:
            self.stop()
            raise
        if self.state_dir.is_dir():  # a stack that keeps a folder (not an external server)
            record_serving(self.state_dir, info.tracking_uri)
        return info

    def _start(self, reason: str) -> StackInfo:
        raise NotImplementedError

    def stop(self) -> None:
        """Every service at once: none needs another to stop, and one after another
        they took the sum of their stops (MLflow's `mlflow server` leader alone takes
        about 2 s to exit after its uvicorn)."""
        forget_serving(self.state_dir)
        services, self._started = self._started, []

        def stop_one(service) -> str | None:
            try:
                service.stop()
            except Exception as exc:  # the others stop all the same
                return f"{type(service).__name__}: {exc}"
            return None

        with ThreadPoolExecutor(max(1, len(services))) as pool:
            errors = [e for e in pool.map(stop_one, services) if e]
        if errors:
            self.log("stack: some services did not stop cleanly: " + "; ".join(errors))

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def credentials(self) -> dict[str, str]:
        return load_credentials(self.state_dir)

    def with_credentials_file(self, s3: S3Endpoint) -> S3Endpoint:
        """`s3` with an AWS credentials file under this stack's folder (mode 0600)."""
        path = write_aws_credentials(self.state_dir / "aws-credentials", s3.access_key, s3.secret_key)
        return dataclasses.replace(s3, credentials_file=path)


def start_mlflow_on(stack: Stack, mysql: MySQLEndpoint, s3: S3Endpoint, reset: Callable[[], None]) -> str:
    """MLflow on MySQL + S3. A first migration that was interrupted leaves a schema
    MLflow cannot use; a marker written after the first healthy start tells a
    half-migrated database from a good one."""
    marker = stack.state_dir / "mlflow" / "schema-ready"
    if not marker.exists() and _has_tables(mysql):
        stack.log(
            f"stack: database {mysql.database!r} has tables but never served MLflow "
            "(an interrupted first migration?): starting it afresh"
        )
        reset()
    server = MLflowServer(
        stack.state_dir / "mlflow",
        backend_uri=mysql.sqlalchemy_uri,
        artifacts_destination=f"s3://{s3.bucket}/artifacts",
        env=s3.env,
        log=stack.log,
    )
    url = stack._run(server)
    marker.write_text("ok\n")
    return url


def _has_tables(mysql: MySQLEndpoint) -> bool:
    try:
        conn = mysql.connect()
    except pymysql.err.OperationalError as exc:  # one line from the session, not a traceback
        raise ServiceError(f"mysql at {mysql.host}:{mysql.port}: cannot connect: {exc.args[-1]}") from None
    try:
        with conn.cursor() as cur:
            return cur.execute("SHOW TABLES") > 0
    finally:
        conn.close()


def info_on(
    kind: str, url: str, reason: str, mysql: MySQLEndpoint, s3: S3Endpoint, s3_kind: str, **more: str
) -> StackInfo:
    """The StackInfo of a MySQL + S3 stack, endpoints first, then `more` to print."""
    return StackInfo(
        kind,
        url,
        reason,
        {
            "mlflow": url,
            "metadata": f"mysql {mysql.host}:{mysql.port}/{mysql.database}",
            "artifacts": f"{s3_kind} {s3.endpoint_url} bucket {s3.bucket}",
            **more,
        },
        mysql=mysql,
        s3=s3,
    )


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
