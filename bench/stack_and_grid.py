"""Benchmarks of the tracking stack and the grid runner (figures go to bench/README.md as ratios).

    python bench/stack_and_grid.py startup [--providers embedded local docker]
    python bench/stack_and_grid.py overhead [--epochs 3 --imgsz 320 --repeat 3]
    python bench/stack_and_grid.py grid [--set epochs=1 ...]

startup:  wall time from `pytest` start to the header line that says the stack is ready.
overhead: MLflow logging + artifact upload time over training time, for one run; and
          the wall time of whole tracked runs against the same training untracked.
grid:     the grid with `-n 2` against a loop starting one pytest process per
          configuration, one after the other (the seed project's way), both on one
          MLflow server, same data and model. Results are appended to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_", "CV_YOLO_SUITE"))}
    return {**env, **extra}


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "experiments", "-p", "no:cacheprovider", *args]


def _folders(root: str | Path) -> list[str]:
    """The options that put a session's stack, reports and runs under `root`."""
    return ["--stack-dir", f"{root}/stack", "--reports-dir", f"{root}/reports", "--runs-dir", f"{root}/runs"]


def startup(providers: list[str]) -> dict:
    results = {}
    for kind in providers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            proc = subprocess.Popen(
                _pytest(
                    "--stack",
                    kind,
                    "--stack-dir",
                    tmp,
                    "-k",
                    "no_such_test",
                    "--no-promote",
                    "--reports-dir",
                    tmp,
                    "--runs-dir",
                    tmp,
                ),
                cwd=REPO,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            ready = None
            for line in proc.stdout:
                if ready is None and line.startswith("  ready in:"):
                    ready = time.monotonic() - start
            proc.wait()
            results[kind] = {
                "pytest_start_to_ready_s": round(ready, 1) if ready else None,
                "whole_session_s": round(time.monotonic() - start, 1),
                "exit": proc.returncode,
            }
            print(kind, results[kind], flush=True)
    return results


def overhead(epochs: int, imgsz: int, data: Path, repeat: int) -> dict:
    """Times every tracking call of real runs against their training time, along the
    path a test takes (reuse lookup and run opening, per-epoch logging, results and
    files, the end, the test's check of what the server recorded): the first run of a
    process (pays the one-time imports and connections) and a second one. The runs
    go in a fresh process that starts as a worker does, after the controller (here)
    has started the stack and opened the session's parent run."""
    import dataclasses
    import multiprocessing

    import yaml
    from mlflow.tracking import MlflowClient

    from mlflow_cv_yolo.handoff import CLIENT_ENV, SessionInfo
    from mlflow_cv_yolo.runs import training_run
    from mlflow_cv_yolo.stack.local import LocalStack

    os.environ.update(CLIENT_ENV)  # the settings every process of a session has
    # The default dataset's digest as the session finds it (from dvc.lock).
    md5 = None
    if data.resolve() == (REPO / "data" / "tiny_coco.yaml").resolve():
        lock = yaml.safe_load((REPO / "dvc.lock").read_text())
        md5 = next(
            o["md5"]
            for st in lock["stages"].values()
            for o in st.get("outs", [])
            if o["path"].rstrip("/") == "data/tiny_coco"
        )
    out: dict = {"epochs": epochs, "imgsz": imgsz, "data": str(data)}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack", log=lambda _: None) as stack:
        client = MlflowClient(stack.tracking_uri)
        experiment_id = client.create_experiment("bench")
        parent = client.create_run(experiment_id, run_name="session").info.run_id
        info = SessionInfo(
            session_id="bench",
            experiment="bench",
            experiment_id=experiment_id,
            tracking_uri=stack.tracking_uri,
            stack_kind="local",
            data=str(data),
            model_requested="yolov8n.pt",
            model_used="yolov8n.yaml",
            pretrained=False,
            model_note="",
            workdir=str(Path(tmp) / "runs"),
            parent_run_id=parent,
            dataset_md5=md5,
            dataset_source="bench" if md5 else None,
        )
        if md5:
            info = dataclasses.replace(info, dataset=training_run.dataset_fields(info))
            training_run.log_dataset(client, parent, info)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out.update(pool.apply(_timed_runs, (info.to_dict(), epochs, imgsz, repeat)))
    return out


def _timed_runs(info: dict, epochs: int, imgsz: int, repeat: int) -> dict:
    """Two runs in this process, as a worker's tests; every MlflowClient call counts,
    nested ones once."""
    from mlflow.tracking import MlflowClient

    from mlflow_cv_yolo.handoff import SessionInfo
    from mlflow_cv_yolo.runs import reuse, tracking, training_run
    from mlflow_cv_yolo.train import devices, training
    from mlflow_cv_yolo.train.grid import RunConfig

    spent = {"tracking": 0.0, "calls": 0, "by_call": {}}
    depth = [0]

    def timed(fn, name: str):
        def wrapper(*args, **kwargs):
            # Nested calls count once; so do the calls of the threads a timed call starts.
            # MLflow's system-metrics thread logs beside the training, not in its way,
            # and so do the recorder's uploads and async metrics, up to finish(),
            # which waits for them.
            if depth[0] or threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            depth[0] += 1
            spent["calls"] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                took = time.perf_counter() - start
                spent["tracking"] += took
                spent["by_call"][name] = round(spent["by_call"].get(name, 0.0) + took, 3)

        return wrapper

    for name, fn in list(vars(MlflowClient).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(MlflowClient, name, timed(fn, name))
    reuse.choose_run = timed(reuse.choose_run, "reuse.choose_run")  # the key, the lookup, the run's opening
    tracking.RunRecorder.finish = timed(tracking.RunRecorder.finish, "finish")  # the results, waiting for the files
    training_run.check_run = timed(training_run.check_run, "check_run")

    info = SessionInfo.from_dict(info)
    client = MlflowClient(info.tracking_uri)
    out = {}
    for which, seed in (("first", 1), ("second", 2)):
        config = RunConfig(
            f"bench-{which}",
            {
                "model": "yolov8n.pt",
                "optimizer": "SGD",
                "epochs": epochs,
                "batch": 8,
                "imgsz": imgsz,
                "lr0": 0.01,
                "seed": seed,
            },
            "bench",
        )
        spent.update(tracking=0.0, calls=0, by_call={})
        start = time.perf_counter()
        opened = reuse.choose_run(client, config, info)
        placement = devices.place(0, 1, (devices.CPU,), devices.cpu_count())
        training_run.train_into_run(training_run.TrainRequest(opened.run_id, config, info, placement))
        assert training_run.check_run(client, opened.run_id, epochs) == []
        train_s = time.perf_counter() - start - spent["tracking"]
        out[which] = {
            "train_s": round(train_s, 1),
            "tracking_s": round(spent["tracking"], 2),
            "calls": spent["calls"],
            "overhead_ratio": round(spent["tracking"] / train_s, 4),
            "by_call": dict(sorted(spent["by_call"].items(), key=lambda kv: -kv[1])),
        }
        out[which]["wall_s"] = round(time.perf_counter() - start, 2)
        print(which, out[which], flush=True)
    # The cross-check the per-call figures cannot make: the background uploads and
    # metrics, the server's work for them and MLflow's system-metrics thread share the
    # CPU with the training. The second configuration trained again, tracked whole (a
    # new run each time: --rerun's path) and with no tracking at all, in turns; the
    # training is deterministic, so both do the same work.
    walls: dict[str, list[float]] = {"tracked": [], "untracked": []}
    for i in range(repeat):
        start = time.perf_counter()
        opened = reuse.choose_run(client, config, info, rerun=True)
        training_run.train_into_run(training_run.TrainRequest(opened.run_id, config, info, placement))
        assert training_run.check_run(client, opened.run_id, epochs) == []
        walls["tracked"].append(round(time.perf_counter() - start, 2))
        start = time.perf_counter()
        training.train(
            config,
            data=Path(info.data),
            model=info.model_used,
            project=Path(info.workdir) / f"untracked-{i}",
            threads=placement.threads,
        )
        walls["untracked"].append(round(time.perf_counter() - start, 2))
    if repeat:
        ratios = sorted((t - u) / u for t, u in zip(walls["tracked"], walls["untracked"], strict=True))
        out["wall"] = {
            **walls,
            "ratios": [round(r, 4) for r in ratios],
            "median_ratio": round(ratios[len(ratios) // 2], 4),
        }
        print("wall", out["wall"], flush=True)
    return out


def grid(extra: list[str], workers: int) -> dict:
    from mlflow_cv_yolo.stack.local import LocalStack

    collected = subprocess.run(
        _pytest("--collect-only", "-q", *extra), cwd=REPO, env=_env(), capture_output=True, text=True, check=True
    ).stdout
    ids = [line.split("[", 1)[1].rstrip("]") for line in collected.splitlines() if "::test_grid[" in line]
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack", log=lambda _: None) as info:
        env = _env(MLFLOW_TRACKING_URI=info.tracking_uri)
        # --rerun: the loop would otherwise reuse the runs the parallel session trained.
        common = ["--stack", "external", "--no-promote", "--rerun", "--reports-dir", tmp, "--runs-dir", tmp, *extra]
        start = time.monotonic()
        subprocess.run(_pytest("-n", str(workers), *common), cwd=REPO, env=env, check=True, capture_output=True)
        parallel = time.monotonic() - start
        start = time.monotonic()
        for test_id in ids:  # the seed's way: one process per run, one after the other
            subprocess.run(_pytest("-k", test_id, *common), cwd=REPO, env=env, check=True, capture_output=True)
        loop = time.monotonic() - start
    out = {
        "runs": len(ids),
        "workers": workers,
        "parallel_s": round(parallel, 1),
        "loop_s": round(loop, 1),
        "ratio": round(parallel / loop, 3),
        "args": extra,
    }
    print(out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("startup")
    s.add_argument("--providers", nargs="+", default=["embedded", "local"])
    o = sub.add_parser("overhead")
    o.add_argument("--epochs", type=int, default=3)
    o.add_argument("--imgsz", type=int, default=320)
    o.add_argument("--data", type=Path, default=REPO / "data" / "tiny_coco.yaml")
    o.add_argument("--repeat", type=int, default=3, help="tracked/untracked pairs of the wall-time cross-check")
    g = sub.add_parser("grid")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed to both (e.g. --set epochs=1)")
    args = parser.parse_args()
    if args.what == "startup":
        result = startup(args.providers)
    elif args.what == "overhead":
        result = overhead(args.epochs, args.imgsz, args.data, args.repeat)
    else:
        result = grid(args.extra, args.workers)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{args.what}.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
