"""The health monitor on a real local stack: services killed with SIGKILL while a
client keeps logging come back on the same port and data, and nothing the client
was told was stored goes missing; a restart that cannot succeed is reported once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
from helpers import processes_of
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack import CLIENT_RETRY_ENV
from mlflow_cv_yolo.stack.local import LocalStack
from mlflow_cv_yolo.stack.monitor import HealthMonitor
from mlflow_cv_yolo.stack.process import port_in_use


@pytest.fixture
def stack(tmp_path, monkeypatch):
    for key, value in CLIENT_RETRY_ENV.items():
        monkeypatch.setenv(key, value)
    stack = LocalStack(tmp_path / "stack", log=lambda _: None)
    stack.start("test")
    yield stack
    stack.stop()
    assert processes_of(tmp_path) == ""


def service(stack: LocalStack, name: str):
    return next(s for s in stack.services if s.name.split()[0] == name)


class Client(threading.Thread):
    """Logs a metric, a param and an artifact per step until stopped; `acked` holds
    the steps whose three calls all returned."""

    def __init__(self, tracking_uri: str):
        super().__init__(daemon=True)
        self.client = MlflowClient(tracking_uri)
        self.run_id = self.client.create_run(self.client.create_experiment(f"health-{time.time_ns()}")).info.run_id
        self.acked: list[int] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        step = 0
        try:
            while not self.done.is_set():
                self.client.log_metric(self.run_id, "step", step, step=step)
                self.client.log_param(self.run_id, f"p{step}", step)
                self.client.log_text(self.run_id, f"step {step}", f"loop/{step}.txt")
                self.acked.append(step)
                step += 1
                time.sleep(0.2)
        except BaseException as exc:  # the test reports it
            self.error = exc

    def progressed(self, steps: int, timeout: float = 120) -> bool:
        target, deadline = len(self.acked) + steps, time.monotonic() + timeout
        while len(self.acked) < target and self.error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.acked) >= target


def kill(stack: LocalStack, name: str) -> None:
    leader = service(stack, name).process.proc.pid
    if name == "mlflow":  # its serving process is the leader's uvicorn child, not the leader
        leader = int(
            subprocess.run(
                ["pgrep", "-P", str(leader), "-f", "uvicorn"], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
    os.kill(leader, signal.SIGKILL)


def test_killed_services_come_back_and_nothing_logged_is_lost(stack, tmp_path):
    addresses = {s.name: s.address for s in stack.services}
    lines, failures = [], []
    client = Client(f"http://{service(stack, 'mlflow').address}")
    with HealthMonitor(stack, lines.append, failures.append, interval=1.0):
        client.start()
        assert client.progressed(3), client.error
        for name in ("mysql", "s3", "mlflow"):
            kill(stack, name)
            deadline = time.monotonic() + 180
            while not any(f"{name} " in line and " back after " in line for line in lines):
                assert time.monotonic() < deadline and not failures, (lines, failures)
                time.sleep(0.2)
            assert client.progressed(3), (name, client.error, lines)
        client.done.set()
        client.join(timeout=120)
    print("\n".join(lines))  # the restart times, for `pytest -s`
    assert client.error is None and failures == []
    expected = []
    for name in ("mysql (mariadbd)", "s3 (moto)", "mlflow"):
        expected += [f"stack: {name} on {addresses[name]} died; restarting it", f"stack: {name} back after S s"]
    assert [re.sub(r"after \d+\.\d s$", "after S s", line) for line in lines] == expected
    assert {s.name: s.address for s in stack.services} == addresses  # same ports

    reader = MlflowClient(f"http://{addresses['mlflow']}")
    run = reader.get_run(client.run_id)
    steps = client.acked
    assert sorted({m.step for m in reader.get_metric_history(client.run_id, "step")}) == steps
    assert run.data.params == {f"p{i}": str(i) for i in steps}
    folder = reader.download_artifacts(client.run_id, "loop", str(tmp_path / "back"))
    texts = {p.name: p.read_text() for p in (tmp_path / "back" / "loop").iterdir()}
    assert folder.endswith("loop") and texts == {f"{i}.txt": f"step {i}" for i in steps}


@pytest.mark.parametrize("name", ["s3", "mysql"])
def test_a_restart_that_cannot_succeed_is_reported_once(stack, tmp_path, name):
    """s3: its port taken by another socket meanwhile; mysql: its binary gone."""
    victim = service(stack, name)
    port = int(victim.address.rsplit(":", 1)[1])
    lines, failures = [], []
    with socket.socket() as squatter:
        kill(stack, name)
        if name == "s3":
            deadline = time.monotonic() + 10
            while port_in_use(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            why = f"s3 (moto): port {port} on 127.0.0.1 is already taken"
        else:
            victim.binary = str(tmp_path / "gone" / "mariadbd")
            why = f"mysql: executable not found: {victim.binary}"
        with HealthMonitor(stack, lines.append, failures.append, interval=0.5) as monitor:
            deadline = time.monotonic() + 60
            while not failures and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # a few more rounds: still reported once
            assert monitor.failed == failures[0]
    message = f"stack: {victim.name} on {victim.address} could not be restarted: {why}"
    assert failures == [message]
    assert lines == [f"stack: {victim.name} on {victim.address} died; restarting it", message]
