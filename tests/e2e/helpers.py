"""Running the experiment suite as a user does, from the project's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The smallest real grid: one epoch at 64 px, trained from scratch.
MICRO = ("--set", "epochs=1", "--set", "imgsz=64", "--set", "lr0=0.01", "--set", "seed=1", "--set", "batch=8")


# Sessions on a shared stack would otherwise reuse (or continue) the runs of earlier
# tests: a test trains what it asks for unless it is about reuse (tests/e2e/test_reuse.py).
FRESH = ("--rerun", "--no-resume")


def dvc_repro(stage: str) -> None:
    """`dvc repro STAGE` in the repository, with this venv first on PATH (a stage's
    command calls `python` by name)."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    built = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", stage], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]


def suite_command(*args: str, tmp_path: Path, reuse: bool = False) -> list[str]:
    """`python -m pytest experiments ARGS`, as a user runs it, with every folder the
    session writes moved under tmp_path; training every run afresh unless `reuse`."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "experiments",
        "-p",
        "no:cacheprovider",
        "--reports-dir",
        str(tmp_path / "reports"),
        "--runs-dir",
        str(tmp_path / "runs"),
        *(() if reuse else FRESH),
        *args,
    ]
    if not any(a.startswith("--stack-dir") or a == "--fresh-stack" for a in args):
        command += ["--stack-dir", str(tmp_path / "stack")]
    return command


def suite_env(env: dict | None = None) -> dict[str, str]:
    """A fresh session's environment: nothing of this one's pytest, tracking URI or
    suite leaks in (image overrides such as CV_YOLO_MYSQL_IMAGE do pass)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_", "CV_YOLO_SUITE"))}
    full_env.update(env or {})
    return full_env


def run_suite(
    *args: str, tmp_path: Path, env: dict | None = None, timeout: int = 900, reuse: bool = False
) -> subprocess.CompletedProcess:
    """The suite run to completion from the repo root (see suite_command, suite_env)."""
    return subprocess.run(
        suite_command(*args, tmp_path=tmp_path, reuse=reuse),
        cwd=REPO,
        env=suite_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_suite(*args: str, tmp_path: Path, env: dict | None = None, reuse: bool = False) -> subprocess.Popen:
    """The suite started in the background, its output merged into `stdout`, unbuffered
    (a test waits on its lines as they come)."""
    return subprocess.Popen(
        suite_command(*args, tmp_path=tmp_path, reuse=reuse),
        cwd=REPO,
        env=suite_env({"PYTHONUNBUFFERED": "1", **(env or {})}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(
    condition,
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    interval: float = 0.2,
    output: Output | None = None,
):
    """Poll `condition` until it returns something truthy; fail naming `what` (and
    quoting the session's output when there is one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the session ended (exit {proc.returncode}) before {what}"
                + (f":\n{output.wait_closed(10)[-4000:]}" if output else "")
            )
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{output.text[-4000:]}" if output else "")
    )


def session_of(output: str) -> str:
    """The session id the header prints (`session: 20261127-120933-637f, experiment ...`)."""
    return next(line.split()[1].rstrip(",") for line in output.splitlines() if line.startswith("session: "))


def session_runs(client, session: str, experiment: str = "cv_yolo_tiny") -> dict[str, object]:
    """run name -> run, for every run (grid and parent) of one session."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`suite.session` = '{session}'", max_results=100)
    return {r.info.run_name: r for r in runs}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_groups(state: Path) -> list[int]:
    """The process groups a stack folder's pid files name (mysqld.pid is MariaDB's own)."""
    return [int(p.read_text().split()[0]) for p in state.rglob("*.pid") if p.name != "mysqld.pid"]


def processes_of(folder: Path) -> str:
    """`pgrep -af FOLDER`: every live process whose command line names the folder."""
    return subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout


class Output:
    """A background session's output, read as it comes (so a test can wait on a line)."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stdout.readline, ""):
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_closed(self, timeout: float) -> str:
        self._thread.join(timeout)
        return self.text


# CI that provides a Docker engine (Podman in .ci/run) says so with this variable:
# there, a test that finds no engine fails instead of skipping, so a broken engine
# cannot turn CI green.
REQUIRE_DOCKER = "CV_YOLO_REQUIRE_DOCKER"


def engine_missing(why: str) -> None:
    """Skip with `why`, or fail where CV_YOLO_REQUIRE_DOCKER=1."""
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 (CI declares a Docker engine) but {why}", pytrace=False)
    pytest.skip(why)
