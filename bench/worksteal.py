"""Runs of unequal length on two workers: xdist's `load` against `worksteal` (the
suite's default), on one grid whose long runs train 10x the epochs of its short ones.

    python bench/worksteal.py                      # epochs 1 and 10 at 64 px, seeds 1,2: 4 runs
    python bench/worksteal.py --repeat 2 -- --set imgsz=96

The grid's order puts both short runs first: `load` hands each worker two
consecutive tests up front, so both long runs queue on one worker while the other
runs dry; `worksteal` moves the second long run to the idle worker. Each session
trains every run (--rerun --no-resume) against one local stack started once (its
start is not in the walls). Walls and the ratio load/worksteal go to
bench/out/worksteal.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
GRID = ["--set", "epochs=1,10", "--set", "seed=1,2", "--set", "imgsz=64", "--set", "lr0=0.01", "--set", "batch=8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--data", default=str(REPO / "data" / "coco_persons.yaml"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every session")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    sys.path.insert(0, str(REPO / "src"))
    from mlflow_cv_yolo.stack.local import LocalStack
    from mlflow_cv_yolo.train import devices

    walls: dict[str, list[float]] = {"load": [], "worksteal": []}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack", log=lambda _: None) as info:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_", "CV_YOLO_SUITE"))}
        env["MLFLOW_TRACKING_URI"] = info.tracking_uri
        for _ in range(args.repeat):
            for dist in walls:  # alternating, so a change in the machine's load hits both
                command = [sys.executable, "-m", "pytest", "experiments", "-p", "no:cacheprovider", "-n", "2"]
                command += ["--dist", dist] if dist == "load" else []  # worksteal: the suite's own default
                command += ["--stack", "external", "--no-promote", "--rerun", "--no-resume", "--data", args.data]
                command += ["--reports-dir", tmp, "--runs-dir", tmp, *GRID, *extra]
                start = time.monotonic()
                result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
                walls[dist].append(round(time.monotonic() - start, 1))
                print(f"--dist {dist}: {walls[dist][-1]} s (exit {result.returncode})", flush=True)
                if result.returncode != 0:
                    sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    out = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cores": devices.cpu_count(),
        "args": GRID + extra,
        "walls_s": walls,
        "ratio_load_to_worksteal": round(sum(walls["load"]) / sum(walls["worksteal"]), 3),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "worksteal.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
