"""An S3-compatible server process for MLflow artifacts and the DVC remote:
MinIO when a `minio` binary is on PATH, else this package's s3_store (moto's S3
API, every object written through to a folder before the upload is answered)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

from .process import ServiceError, ServiceProcess, free_port, port_in_use


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    # An AWS shared-credentials file with these keys (mode 0600, under the stack's
    # folder), for tools configured by path such as DVC; None until a stack writes it.
    credentials_file: Path | None = None

    def client(self, read_timeout: float = 30, attempts: int = 2):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": attempts}, connect_timeout=3, read_timeout=read_timeout),
        )

    @property
    def env(self) -> dict[str, str]:
        """What MLflow's server, boto3 and DVC read to reach this endpoint."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def ensure_bucket(endpoint: S3Endpoint) -> None:
    client = endpoint.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if endpoint.bucket not in existing:
        client.create_bucket(Bucket=endpoint.bucket)


class S3Server:
    """`start()` returns the endpoint once the bucket exists. Objects live in
    `workdir/objects/<bucket>/<key>` (s3_store) or MinIO's `workdir/data`, so they
    survive the server, a kill -9 included; `restart()` serves them again on the
    same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        access_key: str,
        secret_key: str,
        bucket: str = "mlflow",
        port: int | None = None,
        log: Callable[[str], None] = print,
    ):
        self.workdir = Path(workdir).absolute()
        self.port = port
        self.access_key, self.secret_key, self.bucket = access_key, secret_key, bucket
        self.log = log
        self.minio = shutil.which("minio")
        self.kind = "minio" if self.minio else "moto"
        self.name = f"s3 ({self.kind})"
        self.process: ServiceProcess | None = None

    def __repr__(self) -> str:
        return f"S3Server({self.workdir}, {self.kind}, port={self.port})"

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(f"http://127.0.0.1:{self.port}", self.access_key, self.secret_key, self.bucket)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def objects_dir(self) -> Path:
        return self.workdir / "objects"

    def _argv(self) -> tuple[list[str], dict[str, str]]:
        if self.minio:
            return (
                [
                    self.minio,
                    "server",
                    str(self.workdir / "data"),
                    "--address",
                    f"127.0.0.1:{self.port}",
                    "--console-address",
                    f"127.0.0.1:{free_port()}",
                ],
                {"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key},
            )
        # The module's file, not `-m`: a plain script starts without importing this
        # package, which matters when the health monitor restarts it on busy cores.
        store = Path(__file__).with_name("s3_store.py")
        return [sys.executable, str(store), "server", str(self.objects_dir), "--address", f"127.0.0.1:{self.port}"], {}

    def _migrate_snapshot(self) -> None:
        """Earlier versions kept moto's bucket in `snapshot/`, written only on a clean
        stop; its files are this bucket's objects. Moved once, by rename."""
        old, new = self.workdir / "snapshot", self.objects_dir / self.bucket
        if self.kind != "moto" or not old.is_dir():
            return
        if new.exists():
            self.log(f"s3 (moto): {old} left as it is: {new} already exists")
            return
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        self.log(f"s3 (moto): moved the objects of {old} to {new}")

    def start(self) -> S3Endpoint:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess("s3", [], self.workdir, log=self.log)
        self.process.reap_leftover()
        self.port = self.port or free_port()
        if port_in_use(self.port):
            raise ServiceError(f"{self.name}: port {self.port} on 127.0.0.1 is already taken")
        self._migrate_snapshot()
        self.process.argv, self.process.env = self._argv()
        self.process.start()
        # Short calls: something else answering on the port must not hold up noticing
        # that our process died (wait_ready checks between calls).
        client = self.endpoint.client(read_timeout=2, attempts=1)
        self.process.wait_ready(lambda: client.list_buckets() is not None, timeout=60)
        try:
            ensure_bucket(self.endpoint)
        except client.exceptions.ClientError as exc:
            raise ServiceError(
                f"{self.name} at {self.endpoint.endpoint_url}: cannot create bucket {self.bucket!r}: {exc}"
            ) from None
        return self.endpoint

    def alive(self) -> bool:
        return self.process is not None and self.process.running and port_in_use(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
