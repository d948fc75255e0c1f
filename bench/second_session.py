"""Benchmark: an unchanged second session of the default grid, which reuses every run.

    python bench/second_session.py [--stack local] [-- EXTRA PYTEST ARGS]

Runs the grid twice on one stack folder (a fresh one in /tmp): the first session
trains every run, the second finds them all FINISHED with the same keys. For each it
records the wall time from `pytest` start to exit, the stack's start (pytest start to
the header's `ready in` line) and the summary's `N reused, M trained` line. The aim:
second wall <= second stack start + 10 s. Results are appended to bench/out/second_session.jsonl.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))
from stack_and_grid import _env, _folders, _pytest  # noqa: E402


def session(args: list[str]) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen(
        _pytest(*args), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ready, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if ready is None and line.startswith("  ready in:"):
            ready = time.monotonic() - start
    proc.wait()
    wall = time.monotonic() - start
    counts = next((line.strip() for line in lines if re.match(r"\d+ reused, \d+ trained", line)), None)
    if proc.returncode != 0:
        sys.stdout.write("".join(lines[-40:]))
    return {
        "wall_s": round(wall, 1),
        "stack_ready_s": round(ready, 1) if ready else None,
        "after_ready_s": round(wall - ready, 1) if ready else None,
        "counts": counts,
        "exit": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="local", choices=("local", "embedded"))
    parser.add_argument("-n", "--workers", default="2")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="keep the stack, runs and reports here (default: a "
        "throwaway folder); with --second-only, time one more unchanged session on it",
    )
    parser.add_argument("--second-only", action="store_true")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for both sessions (after --)")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    with tempfile.TemporaryDirectory() as throwaway:
        tmp = args.state or throwaway
        common = [
            "--stack",
            args.stack,
            *_folders(tmp),
            "-n",
            args.workers,
            *extra,
        ]
        first = None if args.second_only else session(common)
        print("first", first, flush=True)
        second = session(common)
        print("second", second, flush=True)
    result = {
        "stack": args.stack,
        "workers": args.workers,
        "args": extra,
        "first": first,
        "second": second,
        "second_over_first": round(second["wall_s"] / first["wall_s"], 3) if first else None,
        "second_within_aim": bool(second["after_ready_s"] is not None and second["after_ready_s"] <= 10.0),
    }
    print(json.dumps(result), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "second_session.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
