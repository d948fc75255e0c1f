"""More xdist workers than cores: does `-n 4` on a 2-core machine cost anything over `-n 2`?

    python bench/workers.py                       # -n 2 and -n 4, alternating, twice each
    python bench/workers.py --workers 2 4 --repeat 1 -- --set epochs=1
    git archive HEAD~5 | tar -x -C /tmp/old && python bench/workers.py --checkout /tmp/old   # another commit

Each session trains the grid (default experiments/grid.yaml, 8 runs, --no-promote)
against one local stack (MariaDB + S3 + MLflow server, started once, so its start
is not in the walls). On a CPU-only machine a session starts one worker a core at
most (devices.workers_to_start): the runs beyond wait in xdist's queue, instead of
extra workers that waited for a training slot while their start took cores from
the runs training. Each worker gets cores // workers torch threads (devices.place).
Walls and the ratio to the first worker count go to bench/out/workers.jsonl.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the code to measure (default: this one)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every session")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    sys.path.insert(0, str(REPO / "src"))
    from mlflow_cv_yolo.stack.local import LocalStack
    from mlflow_cv_yolo.train import devices

    walls: dict[int, list[float]] = {n: [] for n in args.workers}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack", log=lambda _: None) as info:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_", "CV_YOLO_SUITE"))}
        env["MLFLOW_TRACKING_URI"] = info.tracking_uri
        env["PYTHONPATH"] = str(args.checkout.resolve() / "src")
        # Every session trains: code with reuse would otherwise take the first session's runs.
        fresh = (
            ["--rerun", "--no-resume"] if "--rerun" in (args.checkout / "fixtures" / "options.py").read_text() else []
        )
        for _ in range(args.repeat):
            for n in args.workers:  # alternating, so a change in the machine's load hits both
                command = [
                    sys.executable,
                    "-m",
                    "pytest",
                    "experiments",
                    "-p",
                    "no:cacheprovider",
                    "-n",
                    str(n),
                    "--stack",
                    "external",
                    "--no-promote",
                    *fresh,
                    "--reports-dir",
                    tmp,
                    "--runs-dir",
                    tmp,
                    *extra,
                ]
                start = time.monotonic()
                result = subprocess.run(command, cwd=args.checkout, env=env, capture_output=True, text=True)
                walls[n].append(round(time.monotonic() - start, 1))
                line = next((x for x in result.stdout.splitlines() if x.startswith("devices: ")), "")
                print(f"-n {n}: {walls[n][-1]} s (exit {result.returncode}) {line}", flush=True)
                if result.returncode != 0:
                    sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    base = args.workers[0]
    out = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkout": str(args.checkout),
        "cores": devices.cpu_count(),
        "args": extra,
        "walls_s": walls,
        f"ratio_to_n{base}": {n: round(sum(w) / sum(walls[base]), 3) for n, w in walls.items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "workers.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
