"""The services the suite tracks to: MySQL, S3 and an MLflow server, by provider
(one module each: embedded, local, containers, external), and the choice of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .base import CLIENT_RETRY_ENV, Service, Stack, StackInfo
from .embedded import EmbeddedStack
from .external import ExternalStack
from .local import LocalStack
from .mysql import find_server_binary
from .process import ServiceError

__all__ = [
    "CLIENT_RETRY_ENV",
    "KINDS",
    "Service",
    "ServiceError",
    "Stack",
    "StackInfo",
    "choose",
    "docker_engine_answers",
    "make_stack",
]

KINDS = ("auto", "embedded", "local", "docker", "external")


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


def make_stack(kind: str, state_dir: Path, log: Callable[[str], None] = print, **images) -> Stack:
    """The provider for `kind` (not "auto": see choose). `images` go to the docker one."""
    if kind == "embedded":
        return EmbeddedStack(state_dir, log)
    if kind == "local":
        return LocalStack(state_dir, log)
    if kind == "external":
        return ExternalStack(state_dir, log=log)
    if kind == "docker":
        from .containers import DockerStack  # testcontainers: imported only when used

        return DockerStack(state_dir, log=log, **images)
    raise ValueError(f"--stack {kind}: unknown (allowed: {', '.join(KINDS)})")
