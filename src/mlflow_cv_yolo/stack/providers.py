"""One stack contract (an MLflow tracking URL, and where metadata and artifacts
live), four ways to get it: embedded (SQLite), local (MariaDB + S3 server
processes), docker (testcontainers) and external (a server already running)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .mlflow_server import MLflowServer, require_reachable
from .mysql import MySQLEndpoint, MySQLServer, find_server_binary
from .s3 import S3Endpoint, S3Server

KINDS = ("auto", "embedded", "local", "docker", "external")


@dataclass
class StackInfo:
    kind: str
    tracking_uri: str
    reason: str
    # Printable endpoints only: secrets stay in mysql/s3 and the credentials file.
    endpoints: dict[str, str] = field(default_factory=dict)
    mysql: MySQLEndpoint | None = None
    s3: S3Endpoint | None = None


class Stack:
    """Starts its services in order; `stop()` stops the started ones in reverse,
    and a failing `start()` stops what it had already started."""

    kind = ""

    def __init__(self, state_dir: Path, log: Callable[[str], None] = print):
        self.state_dir = Path(state_dir) / self.kind
        self.log = log
        self._started: list = []

    def _run(self, service):
        result = service.start()
        self._started.append(service)
        return result

    def _run_together(self, *services) -> list:
        """Start independent services at once (the database and S3 don't wait for
        each other); if one fails, the others still finish starting and are recorded,
        so that stop() stops them."""
        with ThreadPoolExecutor(len(services)) as pool:
            futures = [pool.submit(self._run, service) for service in services]
        return [future.result() for future in futures]

    def start(self, reason: str = "") -> StackInfo:
        try:
            return self._start(reason)
        except BaseException:
            self.stop()
            raise

    def _start(self, reason: str) -> StackInfo:
        raise NotImplementedError

    def stop(self) -> None:
        errors = []
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(f"{type(service).__name__}: {exc}")
        if errors:
            self.log("stack: some services did not stop cleanly: " + "; ".join(errors))

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def credentials(self) -> dict[str, str]:
        """Generated once per stack folder and kept beside its data (mode 0600), so a
        kept database and bucket can be opened again; never written anywhere else."""
        path = self.state_dir / "credentials.json"
        if path.exists():
            return json.loads(path.read_text())
        creds = {"mysql_user": "mlflow", "mysql_password": secrets.token_hex(16),
                 "s3_access_key": "mlflow" + secrets.token_hex(4), "s3_secret_key": secrets.token_hex(20)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
        return creds


class EmbeddedStack(Stack):
    kind = "embedded"

    def _start(self, reason: str) -> StackInfo:
        server = MLflowServer(self.state_dir / "mlflow", backend_uri=f"sqlite:///{self.state_dir / 'mlflow.db'}",
                              artifacts_destination=str(self.state_dir / "artifacts"), log=self.log)
        url = self._run(server)
        return StackInfo(self.kind, url, reason, {"mlflow": url, "metadata": f"sqlite {self.state_dir / 'mlflow.db'}",
                                                  "artifacts": str(self.state_dir / "artifacts")})


def start_mlflow_on(stack: Stack, mysql: MySQLEndpoint, s3: S3Endpoint, reset: Callable[[], None]) -> str:
    """MLflow on MySQL + S3. A first migration that was interrupted leaves a schema
    MLflow cannot use; a marker written after the first healthy start tells a
    half-migrated database from a good one."""
    marker = stack.state_dir / "mlflow" / "schema-ready"
    if not marker.exists() and _has_tables(mysql):
        stack.log(f"stack: database {mysql.database!r} has tables but never served MLflow "
                  "(an interrupted first migration?): starting it afresh")
        reset()
    server = MLflowServer(stack.state_dir / "mlflow", backend_uri=mysql.sqlalchemy_uri,
                          artifacts_destination=f"s3://{s3.bucket}/artifacts", env=s3.env, log=stack.log)
    url = stack._run(server)
    marker.write_text("ok\n")
    return url


def _has_tables(mysql: MySQLEndpoint) -> bool:
    conn = mysql.connect()
    try:
        with conn.cursor() as cur:
            return cur.execute("SHOW TABLES") > 0
    finally:
        conn.close()


def _info(kind: str, url: str, reason: str, mysql: MySQLEndpoint, s3: S3Endpoint, s3_kind: str) -> StackInfo:
    return StackInfo(kind, url, reason, {
        "mlflow": url, "metadata": f"mysql {mysql.host}:{mysql.port}/{mysql.database}",
        "artifacts": f"{s3_kind} {s3.endpoint_url} bucket {s3.bucket}"}, mysql=mysql, s3=s3)


class LocalStack(Stack):
    kind = "local"

    def _start(self, reason: str) -> StackInfo:
        creds = self.credentials()
        mysql = MySQLServer(self.state_dir / "mysql", user=creds["mysql_user"], password=creds["mysql_password"],
                            log=self.log)
        s3 = S3Server(self.state_dir / "s3", access_key=creds["s3_access_key"], secret_key=creds["s3_secret_key"],
                      log=self.log)
        mysql_endpoint, s3_endpoint = self._run_together(mysql, s3)
        url = start_mlflow_on(self, mysql_endpoint, s3_endpoint, mysql.reset_database)
        return _info(self.kind, url, reason, mysql_endpoint, s3_endpoint, s3.kind)


class ExternalStack(Stack):
    kind = "external"

    def __init__(self, state_dir: Path, url: str | None = None, log: Callable[[str], None] = print):
        super().__init__(state_dir, log)
        self.url = url or os.environ.get("MLFLOW_TRACKING_URI", "")

    def _start(self, reason: str) -> StackInfo:
        if not self.url:
            raise RuntimeError("--stack external: set MLFLOW_TRACKING_URI to the server's URL")
        if self.url.startswith(("http://", "https://")):
            require_reachable(self.url)
        return StackInfo(self.kind, self.url, reason, {"mlflow": self.url})


def docker_engine_answers() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__})"


def choose(kind: str) -> tuple[str, str]:
    """Resolve `auto` to a provider, with the reason the header prints."""
    if kind != "auto":
        return kind, f"--stack {kind}"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "external", "MLFLOW_TRACKING_URI is set"
    why_not_docker = docker_engine_answers()
    if why_not_docker is None:
        return "docker", "a Docker engine answers"
    binary = find_server_binary()
    if binary:
        return "local", f"{why_not_docker}; found {binary}"
    return "embedded", f"{why_not_docker}; no mariadbd/mysqld binary"


def make_stack(kind: str, state_dir: Path, log: Callable[[str], None] = print, **docker_images) -> Stack:
    if kind == "embedded":
        return EmbeddedStack(state_dir, log)
    if kind == "local":
        return LocalStack(state_dir, log)
    if kind == "external":
        return ExternalStack(state_dir, log=log)
    if kind == "docker":
        from .docker import DockerStack

        return DockerStack(state_dir, log=log, **docker_images)
    raise ValueError(f"--stack {kind}: unknown (allowed: {', '.join(KINDS)})")


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
