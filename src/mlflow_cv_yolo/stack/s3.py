"""An S3-compatible server process for MLflow artifacts and the DVC remote:
MinIO when a `minio` binary is on PATH, else moto's server."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import boto3
from botocore.config import Config

from .process import ServiceError, ServiceProcess, free_port, port_in_use


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30))

    @property
    def env(self) -> dict[str, str]:
        """What MLflow's server, boto3 and DVC read to reach this endpoint."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}


def ensure_bucket(endpoint: S3Endpoint) -> None:
    client = endpoint.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if endpoint.bucket not in existing:
        client.create_bucket(Bucket=endpoint.bucket)


class S3Server:
    """`start()` returns the endpoint once the bucket exists. moto keeps objects in
    memory, so its bucket is saved to `workdir/snapshot` on stop and restored on
    start: runs logged in one session can still be opened in the next."""

    def __init__(self, workdir: Path, *, access_key: str, secret_key: str, bucket: str = "mlflow",
                 port: int | None = None, log: Callable[[str], None] = print):
        self.workdir = Path(workdir)
        self.port = port
        self.access_key, self.secret_key, self.bucket = access_key, secret_key, bucket
        self.log = log
        self.minio = shutil.which("minio")
        self.kind = "minio" if self.minio else "moto"
        self.process: ServiceProcess | None = None

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(f"http://127.0.0.1:{self.port}", self.access_key, self.secret_key, self.bucket)

    @property
    def snapshot_dir(self) -> Path:
        return self.workdir / "snapshot"

    def _argv(self) -> tuple[list[str], dict[str, str]]:
        if self.minio:
            return ([self.minio, "server", str(self.workdir / "data"), "--address", f"127.0.0.1:{self.port}",
                     "--console-address", f"127.0.0.1:{free_port()}"],
                    {"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key})
        moto = Path(sys.executable).with_name("moto_server")
        argv = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        return argv + ["--host", "127.0.0.1", "--port", str(self.port)], {}

    def start(self) -> S3Endpoint:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess("s3", [], self.workdir, log=self.log)
        self.process.reap_leftover()
        self.port = self.port or free_port()
        if port_in_use(self.port):
            raise ServiceError(f"s3 ({self.kind}): port {self.port} on 127.0.0.1 is already taken")
        self.process.argv, self.process.env = self._argv()
        self.process.start()
        client = self.endpoint.client()
        self.process.wait_ready(lambda: client.list_buckets() is not None, timeout=30)
        try:
            ensure_bucket(self.endpoint)
        except client.exceptions.ClientError as exc:
            raise ServiceError(f"s3 ({self.kind}) at {self.endpoint.endpoint_url}: cannot create bucket "
                               f"{self.bucket!r}: {exc}") from None
        if self.kind == "moto":
            self._restore()
        return self.endpoint

    def _restore(self) -> None:
        if not self.snapshot_dir.is_dir():
            return
        client = self.endpoint.client()
        files = [p for p in self.snapshot_dir.rglob("*") if p.is_file()]
        for path in files:
            client.upload_file(str(path), self.bucket, path.relative_to(self.snapshot_dir).as_posix())
        self.log(f"s3 (moto): restored {len(files)} objects from {self.snapshot_dir}")

    def _save(self) -> None:
        client = self.endpoint.client()
        fresh = self.snapshot_dir.with_name("snapshot.new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                target = fresh / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(self.bucket, obj["Key"], str(target))
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        fresh.rename(self.snapshot_dir)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.kind == "moto" and self.process.running:
            try:
                self._save()
            except Exception as exc:  # stopping must go on; say what was lost
                self.log(f"s3 (moto): could not save the bucket to {self.snapshot_dir}: {exc}")
        self.process.stop()
