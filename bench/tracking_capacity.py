"""How many concurrently logging runs one MLflow tracking server sustains: a load test
against the local stack (`--stack local`: MariaDB + S3 + `mlflow server`, started by
the project's own stack code in a throwaway folder).

    python bench/tracking_capacity.py [--runs 8 32 64 128] [--period 1.0] [--seconds 20] [--procs 4]

Each level N starts N simulated runs at once (threads spread over --procs client
processes, so the load generator's GIL is not the bottleneck): each creates its run,
then logs one epoch's metrics (one log_batch of 14 metrics, as tracking.RunRecorder
does) every --period seconds for --seconds, then ends its run. Per level: calls made
against calls due (a server that falls behind delays them), latency p50/p95/max of
log_batch, and the error rate (after the clients' own retries, CLIENT_ENV).
A level is sustained when no call failed, p95 < 1 s, and at least 95% of the due
calls were made. Results are appended to bench/out/tracking_capacity.jsonl.

One log_batch per second per run is far faster than real training (an epoch of
YOLOv8n on a GPU takes tens of seconds to minutes): a level of N runs at period p
stands for N * E / p runs whose epochs take E seconds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
OUT = REPO / "bench" / "out"
METRICS = (
    "mAP50-95",
    "mAP50",
    "precision",
    "recall",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
    "epoch_time",
)


def _one_run(uri: str, experiment_id: str, period: float, seconds: float, start_at: float, out: list) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    latencies, errors = [], 0
    time.sleep(max(0.0, start_at - time.time()))
    try:
        run_id = client.create_run(experiment_id, tags={"bench": "tracking_capacity"}).info.run_id
    except Exception:
        out.append({"latencies": [], "errors": 1, "due": 1})
        return
    begin = time.monotonic()
    steps = int(seconds / period)
    for step in range(1, steps + 1):
        # Bounded in time: a run whose calls fall behind makes fewer of them.
        if time.monotonic() - begin >= seconds:
            break
        time.sleep(max(0.0, begin + (step - 1) * period - time.monotonic()))
        now = int(time.time() * 1000)
        t0 = time.monotonic()
        try:
            client.log_batch(run_id, metrics=[Metric(k, 0.5 / step, now, step) for k in METRICS])
            if step > 1:  # the first pays the client's one-time imports and connection
                latencies.append(time.monotonic() - t0)
        except Exception:
            errors += 1
    due = steps - 1
    try:
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        errors += 1
    out.append({"latencies": latencies, "errors": errors, "due": due})


def _client_process(uri: str, experiment_id: str, runs: int, period: float, seconds: float, start_at: float) -> list:
    from mlflow_cv_yolo.handoff import CLIENT_ENV

    os.environ.update(CLIENT_ENV)
    out: list = []
    threads = [
        threading.Thread(target=_one_run, args=(uri, experiment_id, period, seconds, start_at, out))
        for _ in range(runs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def level(uri: str, experiment_id: str, runs: int, period: float, seconds: float, procs: int) -> dict:
    procs = min(procs, runs)
    shares = [runs // procs + (1 if i < runs % procs else 0) for i in range(procs)]
    start_at = time.time() + 3.0  # every client process imported and ready: they start together
    with ProcessPoolExecutor(procs) as pool:
        parts = [
            f.result()
            for f in [pool.submit(_client_process, uri, experiment_id, n, period, seconds, start_at) for n in shares]
        ]
    results = [r for part in parts for r in part]
    latencies = sorted(x for r in results for x in r["latencies"])
    made, errors, due = len(latencies), sum(r["errors"] for r in results), sum(r["due"] for r in results)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    row = {
        "runs": runs,
        "period_s": period,
        "seconds": seconds,
        "calls_due": due,
        "calls_ok": made,
        "errors": errors,
        "error_rate": round(errors / max(1, made + errors), 4),
        "made_of_due": round(made / max(1, due), 3),
        "calls_per_s": round(made / seconds, 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
    }
    row["sustained"] = errors == 0 and row["p95_ms"] < 1000 and row["made_of_due"] >= 0.95
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--period", type=float, default=1.0, help="seconds between a run's epochs")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each level logs")
    parser.add_argument("--procs", type=int, default=4, help="client processes the runs are spread over")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from mlflow_cv_yolo.stack.local import LocalStack

    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        stack = LocalStack(Path(tmp), log=lambda line: None)
        info = stack.start("bench")
        try:
            experiment_id = MlflowClient(info.tracking_uri).create_experiment("capacity")
            rows = []
            for runs in args.runs:
                row = level(info.tracking_uri, experiment_id, runs, args.period, args.seconds, args.procs)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stack.stop()
    OUT.mkdir(exist_ok=True)
    with open(OUT / "tracking_capacity.jsonl", "a") as f:
        f.write(
            json.dumps(
                {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "server_workers": 1, "rows": rows}
            )
            + "\n"
        )
    sustained = [r["runs"] for r in rows if r["sustained"]]
    print(
        f"sustained up to {max(sustained) if sustained else 0} concurrent runs at one epoch every "
        f"{args.period:g} s ({max((r['calls_per_s'] for r in rows if r['sustained']), default=0)} log_batch/s)"
    )


if __name__ == "__main__":
    main()
