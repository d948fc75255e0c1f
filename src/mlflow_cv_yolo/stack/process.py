"""A background service process: started in its own process group, polled until
ready, stopped with its whole group, and recorded in a pid file so that a session
killed with SIGKILL can be cleaned up by the next one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable


class ServiceError(RuntimeError):
    """A service that would not start; the message names it and quotes its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
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


class ServiceProcess:
    """One service. `name` is what errors call it; `workdir` holds its log and pid file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
                 log: Callable[[str], None] = print):
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
        try:
            pgid = int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        if _group_alive(pgid) and self._is_ours(pgid):
            self.log(f"{self.name}: stopping process group {pgid} left by an earlier session")
            kill_group(pgid)
        self.pid_path.unlink(missing_ok=True)

    def _is_ours(self, pgid: int) -> bool:
        # A pid can be reused after a reboot; a live leader must still run our program.
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return True  # leader gone, group alive: its orphans are ours
        return os.fsencode(Path(self.argv[0]).name) in b" ".join(cmdline)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.reap_leftover()
        env = {**os.environ, **(self.env or {})}  # explicit, never inherited: see mysql._install_db
        with open(self.log_path, "ab") as logfile:
            try:
                # A new session: Ctrl-C in the terminal must not reach the service
                # before the suite has finished with it; we stop it ourselves.
                self.proc = subprocess.Popen(self.argv, stdout=logfile, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            except FileNotFoundError:
                raise ServiceError(f"{self.name}: executable not found: {self.argv[0]}") from None
        self.pid_path.write_text(f"{self.proc.pid}\n{' '.join(self.argv)}\n")

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
        """Poll `check` until it returns True; give up at once if the process died."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with status {self.proc.returncode} before it was "
                                   f"ready; last lines of {self.log_path}:\n{log_tail(self.log_path)}")
            try:
                if check():
                    return
            except Exception as exc:  # a refused connection is the normal "not yet"
                last_error = exc
            time.sleep(interval)
        detail = f" (last check: {last_error})" if last_error else ""
        raise ServiceError(f"{self.name} was not ready after {timeout:.0f} s{detail}; last lines of "
                           f"{self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid, reap=self.proc.poll)
            self.proc.wait(timeout=5)
            self.proc = None
        self.pid_path.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
