"""Benchmark: the grid trained in full, then with `--prune asha`, then finished later.

    python bench/pruning.py --data data/heldout.yaml --model data/weights/yolov8n-synthetic.pt \\
        --prune-min-epochs 2 --prune-eta 3 -- --set epochs=12 --set imgsz=64,96 \\
        --set lr0=0.0003,0.001,0.003,0.01,0.03,0.1 --set seed=1,2 --set batch=8

Three sessions, back to back on this machine, each on an embedded stack (SQLite) in a
throwaway folder (`--keep DIR` keeps it), with the same arguments after `--`:

1. full: every run trained for every epoch (stack A);
2. pruned: the same with `--prune asha` and the --prune-* options given (stack B);
3. finish: a session without `--prune` on stack B, which continues the pruned runs.

Read back from each stack's SQLite file once its session has ended, it reports:
- compute: epochs trained (sum over runs of the mAP50-95 steps logged), pruned / full
  (aim <= 0.4);
- wall: pytest start to exit, pruned / full;
- spread: the full grid's final best/mAP50-95 per configuration (min, max), so that
  it shows whether the configurations really differ;
- decision: the best configuration by mean best/mAP50-95 over seeds among the runs
  that reached the final epoch, full vs pruned, and whether the pruned choice is the
  full one or within the full grid's seed spread of it;
- finish: the continued runs against the full grid's runs of the same tests: whether
  their val mAP50-95 histories are identical, from which epoch they differ, and how far
  apart the final epoch and best/mAP50-95 end, beside the full grid's seed spread.

Results are appended to bench/out/pruning.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))
from stack_and_grid import _env, _folders, _pytest  # noqa: E402

EXPERIMENT = "prune-bench"


def session(stack: Path, args: list[str]) -> float:
    """One session to its exit; returns its wall time (s)."""
    command = _pytest(
        "--stack", "embedded", *_folders(stack), "--experiment", EXPERIMENT, "--no-promote", *args,
    )  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"session {' '.join(args)} exited {proc.returncode}")
    return wall


def runs(stack: Path) -> dict[str, dict]:
    """test id -> the newest grid run's epochs logged, best mAP50-95, config, pruned tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{stack / 'stack' / 'embedded' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs(
        [experiment.experiment_id], "tags.`suite.kind` = 'grid'", max_results=1000,
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    return {
        r.info.run_name: {
            "history": {m.step: m.value for m in client.get_metric_history(r.info.run_id, "mAP50-95")},
            "best": r.data.metrics.get("best/mAP50-95", float("nan")),
            "config": r.data.tags.get("suite.config", ""),
            "pruned": r.data.tags.get("suite.pruned"),
        }
        for r in found
    }


def by_config(table: dict[str, dict]) -> dict[str, list[float]]:
    """config -> best/mAP50-95 of its runs that reached the final epoch."""
    configs: dict[str, list[float]] = {}
    for run in table.values():
        if not run["pruned"]:
            configs.setdefault(run["config"], []).append(run["best"])
    return configs


def finish_versus_full(finished: dict, full: dict, continued: list[str]) -> dict:
    """How the continued runs end against the full grid's runs of the same tests, beside
    the full grid's seed spread of the same figure (largest between seeds of a configuration)."""

    def final(run: dict) -> float:
        return run["history"][max(run["history"])]

    last = {t: abs(final(finished[t]) - final(full[t])) for t in continued}
    best = {t: abs(finished[t]["best"] - full[t]["best"]) for t in continued}
    seeds: dict[str, list[float]] = {}
    for run in full.values():
        seeds.setdefault(run["config"], []).append(final(run))
    return {
        "epochs_complete": all(finished[t]["history"].keys() == full[t]["history"].keys() for t in continued),
        "identical_histories": sum(finished[t]["history"] == full[t]["history"] for t in continued),
        # Per continued run that differs: the first epoch whose val mAP50-95 is not the full grid's.
        "first_different_epoch": {
            t: min(e for e in full[t]["history"] if finished[t]["history"].get(e) != full[t]["history"][e])
            for t in continued
            if finished[t]["history"] != full[t]["history"]
        },
        "final_epoch_abs_diff": {
            "median": round(statistics.median(last.values()), 4),
            "max": round(max(last.values()), 4),
        },
        "best_abs_diff": {"median": round(statistics.median(best.values()), 4), "max": round(max(best.values()), 4)},
        "final_epoch_seed_spread": round(max(max(v) - min(v) for v in seeds.values()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("-n", "--workers", default="2")
    parser.add_argument("--prune-min-epochs", default=None)
    parser.add_argument("--prune-eta", default="3")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stacks and runs in this folder")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for every session (after --)")
    args = parser.parse_args()
    common = ["--data", args.data, "-n", args.workers, *(["--model", args.model] if args.model else [])]
    common += [a for a in args.extra if a != "--"]
    prune = ["--prune", "asha", "--prune-eta", args.prune_eta]
    prune += ["--prune-min-epochs", args.prune_min_epochs] if args.prune_min_epochs else []
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
        tmp = args.keep or tmp
        full_dir, pruned_dir = Path(tmp) / "full", Path(tmp) / "pruned"
        full_wall = session(full_dir, ["--rerun", "--no-resume", *common])
        full = runs(full_dir)
        pruned_wall = session(pruned_dir, [*prune, *common])
        pruned = runs(pruned_dir)
        finish_wall = session(pruned_dir, common)
        finished = runs(pruned_dir)

    full_epochs, pruned_epochs = (
        sum(len(r["history"]) for r in full.values()),
        sum(len(r["history"]) for r in pruned.values()),
    )
    full_configs = {c: statistics.fmean(v) for c, v in by_config(full).items()}
    pruned_configs = {c: statistics.fmean(v) for c, v in by_config(pruned).items()}
    noise = max((max(v) - min(v) for v in by_config(full).values()), default=0.0)
    full_best, pruned_best = max(full_configs, key=full_configs.get), max(pruned_configs, key=pruned_configs.get)
    gap = full_configs[full_best] - full_configs.get(pruned_best, float("nan"))
    continued = [t for t, r in pruned.items() if r["pruned"]]
    result = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": common + prune,
        "runs": len(full),
        "compute_pruned_over_full": round(pruned_epochs / full_epochs, 3),
        "epochs_trained": {"full": full_epochs, "pruned": pruned_epochs},
        "wall_pruned_over_full": round(pruned_wall / full_wall, 3),
        "wall_s": {"full": round(full_wall, 1), "pruned": round(pruned_wall, 1), "finish": round(finish_wall, 1)},
        "final_map_spread": [round(min(full_configs.values()), 4), round(max(full_configs.values()), 4)],
        "decision": {
            "full": full_best,
            "pruned": pruned_best,
            "same": full_best == pruned_best,
            "gap": round(gap, 4),
            "seed_spread": round(noise, 4),
            "within_seed_noise": full_best == pruned_best or gap <= noise,
        },
        "pruned_runs": len(continued),
        "finish": finish_versus_full(finished, full, continued),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "pruning.jsonl", "a") as out:
        out.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
