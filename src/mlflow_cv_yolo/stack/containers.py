"""`--stack docker`: MySQL and MinIO from testcontainers' own modules, MLflow as a
server process beside them (only that process is watched by the health monitor).
Images come from options or the environment, so a local engine without a registry
(CI's Podman) only changes configuration."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from .base import Stack, StackInfo, info_on, start_mlflow_on
from .mysql import MySQLEndpoint
from .process import ServiceError, free_port
from .s3 import S3Endpoint, ensure_bucket

with warnings.catch_warnings():  # testcontainers 4 moves modules under .community
    warnings.simplefilter("ignore", DeprecationWarning)
    from testcontainers.minio import MinioContainer
    from testcontainers.mysql import MySqlContainer

# Docker Hub stopped serving minio/minio in 2026; MinIO's quay.io copy has the same releases.
DEFAULT_IMAGES = {
    "mysql_image": ("CV_YOLO_MYSQL_IMAGE", "mysql:8.4"),
    "s3_image": ("CV_YOLO_S3_IMAGE", "quay.io/minio/minio:RELEASE.2025-04-03T14-56-28Z"),
}


def image(option: str, given: str | None) -> str:
    env, default = DEFAULT_IMAGES[option]
    return given or os.environ.get(env) or default


class _Container:
    """A testcontainers container as a stack service (start/stop)."""

    def __init__(self, container, endpoint: Callable[[object], object]):
        self.container = container
        self._endpoint = endpoint
        self._stopped = False

    def start(self):
        try:
            self.container.start()
        except Exception as exc:  # docker-py's errors: image missing, engine refusing...
            self.stop()
            raise ServiceError(f"container {self.container.image}: {type(exc).__name__}: {exc}") from None
        return self._endpoint(self.container)

    def stop(self):
        if not self._stopped:
            self._stopped = True
            self.container.stop()


class DockerStack(Stack):
    kind = "docker"

    def __init__(
        self,
        state_dir: Path,
        log: Callable[[str], None] = print,
        mysql_image: str | None = None,
        s3_image: str | None = None,
    ):
        super().__init__(state_dir, log)
        self.mysql_image = image("mysql_image", mysql_image)
        self.s3_image = image("s3_image", s3_image)

    def _start(self, reason: str) -> StackInfo:
        creds = self.credentials()
        for sub in ("mysql", "s3"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        mysql = MySqlContainer(
            self.mysql_image,
            username=creds["mysql_user"],
            password=creds["mysql_password"],
            root_password=creds["mysql_root_password"],
            dbname="mlflow",
        ).with_volume_mapping(str(self.state_dir / "mysql"), "/var/lib/mysql", "rw")
        _loopback(mysql, 3306)
        mysql_service = _Container(
            mysql,
            lambda c: MySQLEndpoint(
                "127.0.0.1", int(c.get_exposed_port(3306)), creds["mysql_user"], creds["mysql_password"], "mlflow"
            ),
        )
        s3 = MinioContainer(
            self.s3_image, access_key=creds["s3_access_key"], secret_key=creds["s3_secret_key"]
        ).with_volume_mapping(str(self.state_dir / "s3"), "/data", "rw")
        _loopback(s3, 9000)
        s3_service = _Container(
            s3,
            lambda c: S3Endpoint(
                f"http://127.0.0.1:{c.get_exposed_port(9000)}", creds["s3_access_key"], creds["s3_secret_key"], "mlflow"
            ),
        )
        mysql_endpoint, s3_endpoint = self._run_together(mysql_service, s3_service)
        ensure_bucket(s3_endpoint)
        s3_endpoint = self.with_credentials_file(s3_endpoint)
        url = start_mlflow_on(self, mysql_endpoint, s3_endpoint, lambda: _reset(mysql_endpoint))
        return info_on(
            self.kind,
            url,
            reason,
            mysql_endpoint,
            s3_endpoint,
            "minio container",
            images=f"{self.mysql_image}, {self.s3_image}",
        )


def _loopback(container, port: int) -> None:
    # testcontainers publishes on every interface; docker-py's (ip, port) form
    # keeps the random host port but binds it to 127.0.0.1 only.
    container.ports[str(port)] = ("127.0.0.1", free_port())


def _reset(endpoint: MySQLEndpoint) -> None:
    conn = endpoint.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = [row[0] for row in cur.fetchall()]
            cur.execute("SET FOREIGN_KEY_CHECKS=0")
            for table in tables:
                cur.execute(f"DROP TABLE `{table}`")
        conn.commit()
    finally:
        conn.close()
