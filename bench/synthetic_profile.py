"""Benchmark: does the offline profile (experiments/synthetic.yaml) separate its
configurations beyond seed noise?

    python bench/synthetic_profile.py [--stack local] [-n 2] [--table FILE] [-- EXTRA PYTEST ARGS]

Runs the profile as a user does, offline (the project checkpoint fine-tuned on the
held-out synthetic variation data/heldout.yaml, built with `dvc repro heldout_dataset`
where missing), on a throwaway stack, and reads the session's decision.json. Prints
the table configurations x seeds (val mAP50-95), the best-vs-worst configuration gap
(difference of the configurations' seed means), the seed spread (the largest
difference between two seeds of one configuration) and their ratio; the aim is a gap
>= 5x the seed spread. `--table FILE` reads a decision.json instead of running.
Results are appended to bench/out/synthetic_profile.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
PROFILE = REPO / "experiments" / "synthetic.yaml"
HELDOUT = REPO / "data" / "heldout.yaml"
METRIC = "mAP50-95"
AIM = 5.0
sys.path.insert(0, str(REPO / "bench"))
from stack_and_grid import _env, _folders, _pytest  # noqa: E402


def ensure_heldout() -> None:
    if HELDOUT.is_file():
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "heldout_dataset"], cwd=REPO, env=env, check=True)


def session(tmp: str, stack: str, workers: str, extra: list[str]) -> tuple[dict, Path]:
    args = [
        "--grid",
        str(PROFILE),
        "--data",
        str(HELDOUT),
        "--stack",
        stack,
        *_folders(tmp),
        "--rerun",
        "--no-resume",
        "-n",
        workers,
        *extra,
    ]
    start = time.monotonic()
    proc = subprocess.run(_pytest(*args), cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = proc.stdout.splitlines()
    sid = next((line.split()[1].rstrip(",") for line in lines if line.startswith("session: ")), None)
    if sid is None or not (Path(tmp) / "reports" / sid / "decision.json").is_file():
        sys.stdout.write("\n".join(lines[-40:]) + proc.stderr[-2000:])
        raise SystemExit(f"the session wrote no decision.json (exit {proc.returncode})")
    ready = next((line for line in lines if line.startswith("  ready in:")), "")
    gate = next((line.strip() for line in lines if re.match(r"\s*\[(pass|FAIL)\] best mAP50-95", line)), None)
    return (
        {"wall_s": round(wall, 1), "ready": ready.strip(), "gate": gate, "exit": proc.returncode},
        Path(tmp) / "reports" / sid / "decision.json",
    )


def spread(table: list[dict]) -> dict:
    """Per configuration (imgsz, lr0, epochs): the seeds' values; the gap and the seed spread."""
    by_config: dict[str, dict[str, float]] = defaultdict(dict)
    for row in table:
        if row.get(METRIC) is None:
            continue
        config = f"imgsz={row['imgsz']} lr0={row['lr0']} epochs={row['epochs']}"
        by_config[config][str(row["seed"])] = float(row[METRIC])
    means = {c: sum(v.values()) / len(v) for c, v in by_config.items()}
    seeds = {c: max(v.values()) - min(v.values()) for c, v in by_config.items() if len(v) > 1}
    gap = max(means.values()) - min(means.values())
    noise = max(seeds.values()) if seeds else float("nan")
    return {
        "table": {c: dict(sorted(v.items())) for c, v in sorted(by_config.items(), key=lambda kv: -means[kv[0]])},
        "means": {c: round(m, 4) for c, m in means.items()},
        "gap": round(gap, 4),
        "seed_spread": round(noise, 4),
        "gap_over_seed_spread": round(gap / noise, 1) if noise else None,
        "aim_met": bool(noise == noise and gap >= AIM * noise),
    }


def show(result: dict) -> None:
    seeds = sorted({s for v in result["table"].values() for s in v})
    print(f"{'configuration':40s} " + " ".join(f"seed {s:>4s}" for s in seeds) + "      mean")
    for config, values in result["table"].items():
        cells = " ".join(f"{values.get(s, float('nan')):9.4f}" for s in seeds)
        print(f"{config:40s} {cells} {result['means'][config]:9.4f}")
    print(
        f"best-vs-worst gap {result['gap']:.4f}, seed spread {result['seed_spread']:.4f}: "
        f"gap = {result['gap_over_seed_spread']}x the seed spread (aim >= {AIM:g}x: "
        f"{'met' if result['aim_met'] else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="local", choices=("local", "embedded"))
    parser.add_argument("-n", "--workers", default="2")
    parser.add_argument("--table", type=Path, default=None, help="a decision.json to read instead of running")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for the session (after --)")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    timing: dict = {}
    if args.table:
        decision = json.loads(args.table.read_text())
    else:
        ensure_heldout()
        with tempfile.TemporaryDirectory() as tmp:
            timing, path = session(tmp, args.stack, args.workers, extra)
            decision = json.loads(path.read_text())
        print("session", timing, flush=True)
    result = {**spread(decision["table"]), "session": timing, "cpus": os.cpu_count(), "args": extra}
    show(result)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "synthetic_profile.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
