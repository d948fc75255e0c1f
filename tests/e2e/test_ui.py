"""`python -m mlflow_cv_yolo ui` on a kept local stack, as the README gives it: the
default relative `--stack-dir .stack`, stopped by Ctrl-C or SIGTERM, and started
again after a kill -9 left its services running; beside a live session on the same
folder, neither stops the other's services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import MICRO, Output, group_alive, pid_groups, processes_of, run_suite, start_suite, wait_for
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack.local import LocalStack


@pytest.fixture
def kept(tmp_path) -> Path:
    """A folder holding what a suite run leaves: `.stack/local` with one experiment."""
    with LocalStack(tmp_path / ".stack", log=lambda _: None) as info:
        MlflowClient(info.tracking_uri).create_experiment("kept")
    return tmp_path


class Ui:
    """`ui --stack local` started in `cwd` with no --stack-dir (so `.stack`, relative)."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow_cv_yolo", "ui", "--stack", "local"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def url(self, timeout: float = 240) -> str:
        """The URL it prints once the stack is up; the lines before it are kept."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if line.startswith("MLflow UI on the local stack in .stack: http://127.0.0.1:"):
                return line.split(": ", 1)[1].split()[0]
        self.proc.kill()
        pytest.fail("ui printed no URL:\n" + "\n".join(self.lines) + self.proc.stdout.read())

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        output, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "\n".join(self.lines) + "\n" + output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_stops_its_whole_stack_on_a_signal(kept, sig):
    ui = Ui(kept)
    url = ui.url()
    assert MlflowClient(url).get_experiment_by_name("kept") is not None
    state = kept / ".stack" / "local"
    groups = pid_groups(state)
    assert len(groups) == 3 and all(group_alive(g) for g in groups), groups  # mysql, s3, mlflow
    ui.proc.send_signal(sig)
    status, output = ui.finish()
    assert status == 0, output
    assert [g for g in groups if group_alive(g)] == [], output
    assert processes_of(state) == ""


def test_ui_after_a_kill_9_stops_what_the_killed_one_left(kept):
    """The services of a SIGKILLed `ui` outlive it (each runs in its own session);
    the next `ui` stops them by their pid files, without a traceback."""
    first = Ui(kept)
    first.url()
    state = kept / ".stack" / "local"
    left = {name: int((state / name / f"{name}.pid").read_text().split()[0]) for name in ("mysql", "s3", "mlflow")}
    os.kill(first.proc.pid, signal.SIGKILL)
    first.finish()
    assert all(group_alive(g) for g in left.values()), left

    second = Ui(kept)
    url = second.url()
    assert [g for g in left.values() if group_alive(g)] == []
    assert sorted(line for line in second.lines if "left by an earlier session" in line) == sorted(
        f"{name}: stopping process group {pgid} left by an earlier session" for name, pgid in left.items()
    )
    assert MlflowClient(url).get_experiment_by_name("kept") is not None
    second.proc.send_signal(signal.SIGINT)
    status, output = second.finish()
    assert status == 0 and "Traceback" not in output, output
    assert processes_of(state) == ""


def test_ui_beside_a_live_session_shows_its_server_and_stops_nothing(tmp_path, data_yaml):
    stack_dir = tmp_path / ".stack"
    proc = start_suite(
        "--stack", "local", "--stack-dir", str(stack_dir), "--data", str(data_yaml), *MICRO,
        "--set", "epochs=4", "--no-promote", tmp_path=tmp_path,
    )  # fmt: skip
    output = Output(proc)
    url = wait_for(
        lambda: next((line.split()[1] for line in output.lines if line.startswith("  mlflow: http://")), None),
        timeout=300,
        what="the session's stack",
        proc=proc,
        output=output,
    )
    state = stack_dir / "local"
    groups = pid_groups(state)
    ui = subprocess.run(
        [sys.executable, "-m", "mlflow_cv_yolo", "ui", "--stack", "local", "--stack-dir", str(stack_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    session_pid = proc.pid
    assert (ui.returncode, ui.stderr) == (0, ""), ui.stdout
    assert ui.stdout.splitlines() == [
        f"MLflow UI on the local stack in {stack_dir}, served by an experiment session (pid {session_pid}): {url}",
        "(read-only here: it stops when that process ends; `ui` then starts its own)",
    ]
    assert pid_groups(state) == groups and all(group_alive(g) for g in groups)
    assert proc.wait(timeout=600) == 0, output.wait_closed(10)[-3000:]
    assert "left by an earlier session" not in output.wait_closed(10)


def test_a_session_on_a_folder_ui_serves_is_refused_and_ui_keeps_serving(kept, data_yaml):
    ui = Ui(kept)
    url = ui.url()
    state = kept / ".stack" / "local"
    groups = pid_groups(state)
    result = run_suite(
        "--stack", "local", "--stack-dir", str(kept / ".stack"), "--data", str(data_yaml), *MICRO,
        tmp_path=kept / "session", timeout=300,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert line.startswith(
        f"ERROR: --stack-dir: {state} is in use by `ui` (python -m mlflow_cv_yolo ui) (pid {ui.proc.pid}, since "
    ), line
    assert line.endswith("): wait for it to end, or pass another --stack-dir"), line
    assert all(group_alive(g) for g in groups)
    assert MlflowClient(url).get_experiment_by_name("kept") is not None
    ui.proc.send_signal(signal.SIGINT)
    status, output = ui.finish()
    assert status == 0, output
    assert processes_of(state) == ""
