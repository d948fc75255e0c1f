"""The Ray cluster a session's runs train on (`--executor ray`): by default a Ray
instance the session starts on this machine and stops at its end; with
`--ray-address` (`auto`, `HOST:PORT`, `ray://HOST:10001`) a running cluster it joins
and leaves running.

Ray is an extra (`pip install -e .[ray]`): nothing here imports it before it is used."""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mlflow_cv_yolo.errors import InputError
from mlflow_cv_yolo.stack.process import ServiceError, ServiceProcess, free_port, kill_group, port_in_use

PACKAGE = Path(__file__).resolve().parents[1]  # mlflow_cv_yolo/, shipped to Ray's workers
# The stacks this project starts bind every service to 127.0.0.1.
LOOPBACK_STACKS = ("embedded", "local", "docker")


@dataclass(frozen=True)
class ExecutorSettings:
    """Where training runs: in the test's process, or as Ray tasks. Workers get what
    they need of it, resolved (the cluster's address), in SessionInfo.executor."""

    kind: str = "local"
    ray_address: str | None = None  # None: a Ray instance the session starts on this machine
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0


def check_settings(settings: ExecutorSettings) -> None:
    """What can be refused before anything starts: Ray missing, options that need it."""
    if settings.kind != "ray":
        given = [
            flag
            for flag, value, default in (
                ("--ray-address", settings.ray_address, None),
                ("--cpus-per-run", settings.cpus_per_run, 1.0),
                ("--gpus-per-run", settings.gpus_per_run, 0.0),
            )
            if value != default
        ]
        if given:
            raise InputError(f"{', '.join(given)}: only with --executor ray (this session trains locally)")
        return
    if importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray: Ray is not installed in this environment: pip install -e .[ray]")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stack_host(stack_kind: str, tracking_uri: str | None) -> str | None:
    """The host the nodes must reach for tracking: loopback for the stacks started here."""
    if stack_kind in LOOPBACK_STACKS:
        return "127.0.0.1"
    return urlsplit(tracking_uri or "").hostname


def this_machine() -> set[str]:
    """The addresses Ray may name this machine's node by."""
    names = {"127.0.0.1", "localhost"}
    with contextlib.suppress(OSError):
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    try:  # the address of the default route, which Ray picks for a node
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return names


def runtime_env(client_env: dict[str, str]) -> dict:
    """The code travels with the tasks (this session's package, not whatever a node has
    installed), and the MLflow client settings every process of a session shares."""
    return {"py_modules": [str(PACKAGE)], "env_vars": dict(client_env)}


def use_token_auth() -> None:
    """Ray 2.5x+ clusters started where a token exists (~/.ray/auth_token) require it,
    but a driver that joins sends it only in token mode: the same rule `ray start`
    applies, set for this process and the xdist workers it starts."""
    if "RAY_AUTH_MODE" not in os.environ and has_token():
        os.environ["RAY_AUTH_MODE"] = "token"


def has_token() -> bool:
    """Whether Ray finds a token here: RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH
    (default ~/.ray/auth_token) names."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or token.is_file()


def connect(address: str, client_env: dict[str, str]) -> None:
    """Join the cluster at `address` from this process (an xdist worker), once."""
    use_token_auth()  # before Ray is imported: it reads the mode then
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, runtime_env=runtime_env(client_env), **_QUIET)


# No task output mixed into pytest's terminal (a failed task's traceback comes back
# with its exception), no INFO lines.
_QUIET = {"log_to_driver": False, "logging_level": logging.WARNING}

# Waits for EOF on stdin (its end of a pipe only the controller holds: EOF comes when
# the controller exits, however it dies), then stops the head's process group.
_WATCHDOG = """
import os, signal, sys, time
sys.stdin.read()
pgid = int(sys.argv[1])
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        break
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            sys.exit(0)
        time.sleep(0.1)
"""


class RayHead:
    """`ray start --head --block` on this machine, bound to 127.0.0.1 on free ports, in
    its own process group with a folder of its own (Ray's unix sockets live under it,
    and `--ray-address auto` elsewhere never finds it). Stopped with its whole group;
    a watchdog process stops it when the controller dies without stopping it (SIGKILL),
    and the pid file lets the next session stop what even that left."""

    name = "ray-head"

    def __init__(self, workdir: Path, log: Callable[[str], None] = print):
        self.workdir = Path(workdir).absolute()
        self.log = log
        self.port: int | None = None
        self.process: ServiceProcess | None = None
        self._watchdog: subprocess.Popen | None = None
        self._temp_dir: Path | None = None

    def start(self, timeout: float = 120) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._temp_dir = Path(tempfile.mkdtemp(prefix="cvray-", dir="/tmp"))
        if not has_token():
            # `ray start` in token mode needs one and, unlike ray.init, makes none. A fresh
            # one for this instance, outside the checkout, readable by this user only; this
            # process and the workers it starts (they inherit the variable) join with it.
            token = self._temp_dir / "auth_token"
            token.touch(mode=0o600)
            token.write_text(secrets.token_hex(32))
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        self.port = free_port()
        ray = Path(sys.executable).with_name("ray")
        argv = [
            str(ray) if ray.exists() else "ray",
            "start",
            "--head",
            "--block",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self._temp_dir),
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ]
        self.process = ServiceProcess(self.name, argv, self.workdir, env={"RAY_AUTH_MODE": "token"}, log=self.log)
        self.process.start()
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.process.proc.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.process.wait_ready(lambda: port_in_use(self.port), timeout=timeout)
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            proc = self.process.proc
            if proc is not None:
                # A throwaway instance whose drivers have left: nothing to drain (Ray's
                # own SIGTERM handling drains for 30 s).
                kill_group(proc.pid, grace=2.0, reap=proc.poll)
                proc.wait(timeout=5)
            self.process.proc = None
            self.process.stop()  # removes the pid file
            self.process = None
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # its group is gone: it exits at once
            self._watchdog.wait(timeout=10)
            self._watchdog = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


class RayCluster:
    """`start()` starts or joins the cluster from the controller and returns the
    address its workers join; `stop()` leaves it, and stops an instance started here
    (its GCS, raylet and workers)."""

    def __init__(
        self, settings: ExecutorSettings, client_env: dict[str, str], workdir: Path, log: Callable[[str], None] = print
    ):
        self.settings = settings
        self.client_env = client_env
        self.log = log
        self.head = RayHead(workdir, log) if settings.ray_address is None else None
        self.address: str | None = None
        self.node_ips: list[str] = []
        self.resources: dict[str, float] = {}

    @property
    def started_here(self) -> bool:
        return self.head is not None

    def start(self) -> str:
        given = self.settings.ray_address
        what = f"--ray-address {given}" if given else "--executor ray (an instance started on this machine)"
        if self.head is not None:
            # Read by Ray when it is imported: the head requires the token, so must we.
            os.environ["RAY_AUTH_MODE"] = "token"
        use_token_auth()
        import ray

        try:
            address = self.head.start() if self.head is not None else given
            connect(address, self.client_env)
        except ServiceError as exc:
            self.stop()
            raise InputError(f"{what}: could not start a Ray instance: {exc}") from None
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self.stop()
            raise InputError(
                f"{what}: cannot join the Ray cluster: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        # Workers join by the GCS address; Ray Client (ray://) has none, they use the URL.
        self.address = address if address.startswith("ray://") else ray.get_runtime_context().gcs_address
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.node_ips = sorted({n["NodeManagerAddress"] for n in nodes})
        self.resources = ray.cluster_resources()
        return self.address

    @property
    def other_machines(self) -> list[str]:
        """Node addresses that are not this machine's."""
        mine = this_machine()
        return [ip for ip in self.node_ips if ip not in mine]

    def check_reachable(self, stack_kind: str, tracking_uri: str | None) -> None:
        """Every node must reach the tracking server: a stack bound to this machine's
        loopback serves only nodes on this machine."""
        host = stack_host(stack_kind, tracking_uri)
        if self.other_machines and is_loopback(host):
            raise InputError(
                f"--ray-address {self.settings.ray_address}: the cluster has nodes on other machines "
                f"({', '.join(self.other_machines)}) that cannot reach the tracking server on "
                f"{host} (--stack {stack_kind} binds to this machine's loopback): use --stack external "
                "with MLFLOW_TRACKING_URI set to a server the nodes can reach"
            )

    def describe(self) -> str:
        where = "started on this machine" if self.started_here else f"joined at {self.settings.ray_address}"
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        s = self.settings
        return (
            f"ray: {where}, {len(self.node_ips)} node(s), {cpus:g} CPU, {gpus:g} GPU; each run "
            f"{s.cpus_per_run:g} CPU, {s.gpus_per_run:g} GPU"
        )

    def stop(self) -> None:
        """Idempotent."""
        if importlib.util.find_spec("ray") is None:
            return
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.head is not None:
            self.head.stop()
