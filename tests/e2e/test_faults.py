"""Faults of a session that runs its own stack (`--stack local`), injected with real
signals into real processes; afterwards what was recorded is read back: nothing
lost, nothing left RUNNING, nothing left running."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
from helpers import MICRO, Output, processes_of, run_suite, session_of, session_runs, start_suite, wait_for
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.runs.training_run import check_run
from mlflow_cv_yolo.stack.local import LocalStack


def tracking_url(output: Output, proc) -> str:
    return wait_for(
        lambda: next((m.group(1) for m in re.finditer(r"^  mlflow: (http://\S+)$", output.text, re.M)), None),
        timeout=300,
        what="the stack's header",
        proc=proc,
        output=output,
    )


def service_pid(state, name: str) -> int:
    return int((state / name / f"{name}.pid").read_text().split()[0])


def training_on_a_local_stack(tmp_path, data_yaml, epochs: int):
    """One run of `epochs` epochs on a local stack, returned once it trains."""
    proc = start_suite(
        "--stack", "local", "--data", str(data_yaml), *MICRO, "--set", f"epochs={epochs}", "--no-promote",
        tmp_path=tmp_path,
    )  # fmt: skip
    output = Output(proc)
    tracking_url(output, proc)
    wait_for(
        lambda: list((tmp_path / "runs").rglob("results.csv")),
        timeout=300,
        what="training under way",
        proc=proc,
        output=output,
    )
    return proc, output


def test_a_killed_controller_is_cleaned_up_by_the_next_session(tmp_path, data_yaml):
    """kill -9 of the controller once two runs FINISHED: its workers die with it, the
    next session on the same stack folder stops what it left and marks its RUNNING runs
    KILLED, and the FINISHED runs have every file (S3 wrote them through)."""
    first = tmp_path / "first"
    proc = start_suite(
        "--stack",
        "local",
        "--stack-dir",
        str(tmp_path / "stack"),
        "-n",
        "2",
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2,3",
        "--set",
        "epochs=2",
        "--no-promote",
        tmp_path=first,
    )
    output = Output(proc)
    client = MlflowClient(tracking_url(output, proc))
    session = wait_for(
        lambda: next((line.split()[1].rstrip(",") for line in output.lines if line.startswith("session: ")), None),
        timeout=60,
        what="the session id",
    )

    def finished():
        return [
            r for n, r in session_runs(client, session).items() if n.startswith("seed") and r.info.status == "FINISHED"
        ]

    wait_for(lambda: len(finished()) >= 2, timeout=600, what="two FINISHED runs", proc=proc, interval=1)
    # The stack's services run in sessions of their own; the xdist workers in the controller's.
    workers = [p for p in psutil.Process(proc.pid).children() if os.getpgid(p.pid) == os.getpgid(proc.pid)]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert alive == []  # the workers followed their controller
    kept = {r.info.run_id for r in finished()}

    second = run_suite(
        "--stack",
        "local",
        "--stack-dir",
        str(tmp_path / "stack"),
        "--data",
        str(data_yaml),
        *MICRO,
        "--no-promote",
        tmp_path=tmp_path / "second",
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Traceback" not in second.stdout + second.stderr
    assert re.search(
        rf"^\[session\] session {session} was killed before it ended: marked its \d+ RUNNING runs "
        r"KILLED$",
        second.stderr,
        re.M,
    ), second.stderr[-3000:]

    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        runs = session_runs(client, session)
        assert "RUNNING" not in {r.info.status for r in runs.values()}
        parent = next(r for r in runs.values() if r.data.tags["suite.kind"] == "session")
        assert parent.info.status == "KILLED"
        assert parent.data.tags["suite.end_reason"].startswith(f"session {session} died")
        for run_id in kept:
            assert check_run(client, run_id, epochs=2) == []
    assert processes_of(tmp_path) == ""


def test_stack_services_killed_mid_grid_are_restarted(tmp_path, data_yaml):
    """kill -9 of S3, then MariaDB, then MLflow's serving process while a run trains:
    each comes back on its port within seconds, said in one line, and the run finishes
    with every epoch and file."""
    state = tmp_path / "stack" / "local"
    proc, output = training_on_a_local_stack(tmp_path, data_yaml, epochs=12)
    mlflow_leader = psutil.Process(service_pid(state, "mlflow"))
    uvicorn = next(p for p in mlflow_leader.children(recursive=True) if "uvicorn" in " ".join(p.cmdline()))
    for name, pid in (
        ("s3", service_pid(state, "s3")),
        ("mysql", service_pid(state, "mysql")),
        ("mlflow", uvicorn.pid),
    ):
        before = len(re.findall(r" back after ", output.text))
        psutil.Process(pid).send_signal(signal.SIGKILL)
        wait_for(
            lambda before=before: len(re.findall(r" back after ", output.text)) > before,
            timeout=120,
            what=f"{name} restarted",
            proc=proc,
            output=output,
        )
    proc.wait(timeout=600)
    text = output.wait_closed(30)
    assert proc.returncode == 0, text[-4000:]
    for name in ("s3", "mysql", "mlflow"):
        assert len(re.findall(rf"\[session\] stack: {name}\b.* died; restarting it$", text, re.M)) == 1, text[-3000:]
    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:  # the session stopped its own
        client = MlflowClient(info.tracking_uri)
        (run,) = [r for n, r in session_runs(client, session_of(text)).items() if n == "base"]
        assert check_run(client, run.info.run_id, epochs=12) == []


def test_a_stack_that_cannot_be_restarted_ends_the_session_within_a_minute(tmp_path, data_yaml):
    state = tmp_path / "stack" / "local"
    proc, output = training_on_a_local_stack(tmp_path, data_yaml, epochs=40)
    s3 = psutil.Process(service_pid(state, "s3"))
    port = next(c.laddr.port for c in s3.net_connections() if c.status == psutil.CONN_LISTEN)
    with socket.socket() as squatter:
        s3.send_signal(signal.SIGKILL)
        s3.wait(10)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))  # the restart finds its port taken
        squatter.listen()
        killed = time.monotonic()
        proc.wait(timeout=120)
        took = time.monotonic() - killed
    text = output.wait_closed(30)
    assert proc.returncode == 6, text[-4000:]
    assert took < 60, f"the session took {took:.0f} s to end"
    lines = text.splitlines()
    assert "not promoted: the tracking stack could not be kept up (exit status 6)" in lines
    assert processes_of(tmp_path) == ""
    # Nobody could reach its runs then: the next session on the folder ends them, naming why.
    session = session_of(text)
    second = run_suite("--stack", "local", "--data", str(data_yaml), *MICRO, "--no-promote", tmp_path=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(
        rf"^\[session\] session {session} could not end its runs: marked its \d+ RUNNING runs KILLED$",
        second.stderr,
        re.M,
    ), second.stderr[-3000:]
    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:
        runs = session_runs(MlflowClient(info.tracking_uri), session)
        assert "RUNNING" not in {r.info.status for r in runs.values()}
        parent = next(r for r in runs.values() if r.data.tags["suite.kind"] == "session")
        failure = lines[lines.index("not promoted: the tracking stack could not be kept up (exit status 6)") - 1]
        reason = f"session {session} could not end its runs: {failure}; marked by session {session_of(second.stdout)}"
        assert (parent.info.status, parent.data.tags["suite.end_reason"]) == ("KILLED", reason)
    assert processes_of(tmp_path) == ""


def test_a_worker_killed_mid_run_is_replaced_by_one_that_trains(tmp_path, data_yaml):
    """kill -9 of an xdist worker while it trains: xdist starts gw2 of 2, which takes
    the dead worker's place (devices.worker_slot) and trains what was queued for it;
    only the killed test fails."""
    proc = start_suite(
        "--stack", "local", "-n", "2", "--data", str(data_yaml), *MICRO,
        "--set", "seed=1,2,3,4", "--set", "epochs=2", "--no-promote", tmp_path=tmp_path,
    )  # fmt: skip
    output = Output(proc)
    client = MlflowClient(tracking_url(output, proc))
    session = wait_for(lambda: session_of(output.text) if "session: " in output.text else None, timeout=60, what="id")
    wait_for(
        lambda: (
            any(r.info.status == "RUNNING" for n, r in session_runs(client, session).items() if n != "base")
            and len(list((tmp_path / "runs").rglob("results.csv"))) > 0
        ),
        timeout=600,
        what="a run training",
        proc=proc,
        output=output,
        interval=1,
    )
    workers = [p for p in psutil.Process(proc.pid).children() if os.getpgid(p.pid) == os.getpgid(proc.pid)]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    proc.wait(timeout=900)
    text = output.wait_closed(30)
    assert proc.returncode == 1, text[-4000:]  # the killed test failed; nothing else did
    assert "worker 2 of 2" not in text and "ValueError" not in text, text[-4000:]
    assert re.search(r"\b1 failed, 3 passed\b", text), text[-3000:]
    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:  # the session stopped its own
        client = MlflowClient(info.tracking_uri)
        runs = {n: r for n, r in session_runs(client, session).items() if n.startswith("seed")}
        statuses = sorted(r.info.status for r in runs.values())
        assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED"], statuses
