"""A background service process: started in its own process group, polled until
ready, stopped with its whole group, and recorded in a pid file so that a session
killed with SIGKILL can be cleaned up by the next one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mlflow_cv_yolo.errors import ServiceError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, timeout: float = 2.0) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:port. The kernel
    answers for a listening socket, so this stays quick however busy the CPUs are."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join("    " + line for line in text[-lines:]) or "(log is empty)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float = 10.0, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after `grace` seconds.
    `reap` waits on a leader that is our own child: unreaped, it stays a zombie
    member and the group would look alive."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def read_pid_file(path: Path) -> tuple[int, list[str]] | None:
    """(pid, argv) from a pid file ServiceProcess wrote; None when absent or unreadable.
    Files of earlier versions hold the argv joined by spaces on the second line."""
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    text = lines[1] if len(lines) > 1 else ""
    try:
        argv = json.loads(text)
    except ValueError:
        argv = text.split()
    return pid, [str(arg) for arg in argv] if isinstance(argv, list) else []


def _is_ours(pgid: int, argv: list[str]) -> bool:
    """Whether the live leader `pgid` still runs the recorded command: a pid can be
    reused after a reboot. The kernel's command line ends with our arguments; before
    them it may name an interpreter (a `#!` script such as `mlflow`)."""
    try:
        cmdline = [os.fsdecode(a) for a in Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0") if a]
    except FileNotFoundError:
        return True  # leader gone, group alive: its orphans are ours
    args, program = argv[1:], Path(argv[0]).name if argv else None
    if program is None or len(cmdline) <= len(args):
        return False  # nothing recorded, or another command: leave it alone
    head = cmdline[: len(cmdline) - len(args)]
    return cmdline[len(head) :] == args and program in {Path(a).name for a in head}


class ServiceProcess:
    """One service. `name` is what errors call it; `workdir` holds its log and pid file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.name = name
        self.argv = argv
        self.workdir = Path(workdir)
        self.env = env
        self.log = log
        self.log_path = self.workdir / f"{name}.log"
        self.pid_path = self.workdir / f"{name}.pid"
        self.proc: subprocess.Popen | None = None

    def reap_leftover(self) -> None:
        """Stop a process group that a killed session left behind (its pid file survived it)."""
        recorded = read_pid_file(self.pid_path)
        if recorded is None:
            return
        pgid, argv = recorded
        if _group_alive(pgid) and _is_ours(pgid, argv):
            self.log(f"{self.name}: stopping process group {pgid} left by an earlier session")
            kill_group(pgid)
        self.pid_path.unlink(missing_ok=True)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.reap_leftover()
        env = {**os.environ, **(self.env or {})}  # explicit, never inherited: see mysql._install_db
        with open(self.log_path, "ab") as logfile:
            try:
                # A new session: Ctrl-C in the terminal must not reach the service
                # before the suite has finished with it; we stop it ourselves.
                self.proc = subprocess.Popen(
                    self.argv,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise ServiceError(f"{self.name}: executable not found: {self.argv[0]}") from None
        # The pid, then the command line as JSON: what reap_leftover compares a live
        # leader with. The argv holds no secret (those travel in the environment).
        self.pid_path.write_text(f"{self.proc.pid}\n{json.dumps(self.argv)}\n")

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
        """Poll `check` until it returns True; give up at once if the process died."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with status {self.proc.returncode} before it was "
                    f"ready; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if check():
                    return
            except Exception as exc:  # a refused connection is the normal "not yet"
                last_error = exc
            time.sleep(interval)
        detail = f" (last check: {last_error})" if last_error else ""
        raise ServiceError(
            f"{self.name} was not ready after {timeout:.0f} s{detail}; last lines of "
            f"{self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid, reap=self.proc.poll)
            self.proc.wait(timeout=5)
            self.proc = None
        self.pid_path.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        """The leader we started has not exited (polling also reaps it)."""
        return self.proc is not None and self.proc.poll() is None
