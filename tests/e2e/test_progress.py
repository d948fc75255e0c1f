"""Live progress: run states read from a real tracking server, the two ways of
showing them, and a real session under a pseudo-terminal."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time

from helpers import MICRO, REPO, suite_command, suite_env
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.present import progress
from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.stack.embedded import EmbeddedStack


def test_states_of_queued_training_finished_and_failed_runs(tmp_path):
    with EmbeddedStack(tmp_path, log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        experiment = client.create_experiment("progress")

        def run(test_id: str, status: str | None, epochs_done: int = 0) -> None:
            run_id = client.create_run(
                experiment, tags={tracking.TAG_SESSION: "s1", tracking.TAG_KIND: "grid", tracking.TAG_TEST: test_id}
            ).info.run_id
            client.log_batch(
                run_id, metrics=[Metric("mAP50-95", 0.1 * step, 0, step) for step in range(1, epochs_done + 1)]
            )
            if status:
                client.set_terminated(run_id, status)

        run("a", None, epochs_done=2)
        run("b", "FINISHED", epochs_done=3)
        run("c", "FAILED")
        run("d", None)
        states = progress.states(
            client, experiment, "s1", ["a", "b", "c", "d", "e"], {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3}
        )
    assert states == {"a": "epoch 2/3 mAP 0.200", "b": "finished", "c": "failed", "d": "epoch 0/3", "e": "queued"}
    assert progress.summary(states) == (
        "1 finished, 1 failed, 2 training, 1 queued | a epoch 2/3 mAP 0.200 | d epoch 0/3"
    )


class _Line:
    """What Progress reads of pytest's TerminalWriter."""

    fullwidth = 120
    width_of_current_line = 30

    def flush(self) -> None:
        pass


def test_a_log_gets_a_line_when_the_state_changes_and_none_when_it_does_not(tmp_path):
    read, write = os.pipe()
    states = iter([{"a": "queued"}, {"a": "queued"}, {"a": "epoch 1/3 mAP 0.000"}] + [{"a": "finished"}] * 50)
    shown = progress.Progress(lambda: next(states), fd=write, terminal=_Line(), tty=False, interval=0.05)
    shown.start()
    time.sleep(1)
    shown.stop()
    os.close(write)
    with os.fdopen(read) as pipe:
        assert pipe.read() == (
            "\n[progress] 1 queued\n[progress] 1 training | a epoch 1/3 mAP 0.000\n[progress] 1 finished\n"
        )


def test_a_terminal_gets_one_line_redrawn_in_place(tmp_path):
    """A real session under a pseudo-terminal (util-linux `script`): the state line
    is drawn after pytest's dots, erased before pytest writes, and gone at the end."""
    command = suite_command("--stack", "embedded", *MICRO, "--set", "epochs=10", "--no-promote", tmp_path=tmp_path)
    result = subprocess.run(
        ["script", "-q", "-e", "-c", shlex.join(command), "/dev/null"],
        cwd=REPO,
        env=suite_env({"COLUMNS": "160", "TERM": "xterm"}),
        capture_output=True,
        timeout=900,
    )
    raw = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, raw[-3000:]
    drawn = re.findall(r"  1 training \| base epoch (\d+)/10 mAP", raw)
    assert drawn, raw[-3000:]
    assert "\x1b[K" in raw  # each redraw erases the last
    (line,) = [render(line) for line in raw.split("\r\n") if line.startswith("experiments/test_grid.py ")]
    assert re.fullmatch(r"experiments/test_grid\.py \. +\[100%\]", line), line


def render(line: str) -> str:
    """What a terminal shows of one line: a backspace moves the cursor back, ESC[K
    clears from the cursor on, other escapes (colours) show nothing."""
    screen: list[str] = []
    cursor = 0
    for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|\x08|[^\x1b\x08]", line):
        if token == "\x08":
            cursor = max(0, cursor - 1)
        elif token == "\x1b[K":
            del screen[cursor:]
        elif not token.startswith("\x1b"):
            screen[cursor : cursor + 1] = [token]
            cursor += 1
    return "".join(screen)


def test_quiet_sessions_show_no_progress(tmp_path):
    command = suite_command("--stack", "embedded", *MICRO, "--set", "epochs=6", "--no-promote", "-q", tmp_path=tmp_path)
    result = subprocess.run(
        ["script", "-q", "-e", "-c", shlex.join(command), "/dev/null"],
        cwd=REPO,
        env=suite_env({"COLUMNS": "160", "TERM": "xterm"}),
        capture_output=True,
        timeout=900,
    )
    raw = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, raw[-3000:]
    assert "training |" not in raw and "[progress]" not in raw
