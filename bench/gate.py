"""Benchmark: what the detection gate adds to promotion against a champion.

    python bench/gate.py --candidate A.pt --champion B.pt [--data data/coco_persons.yaml]
                         [--synthetic 500] [--imgsz 320] [--device cpu]

Today's promotion step against a champion evaluates four times (candidate and
champion, on val and test). The gate makes the two test evaluations keep per-image
records and adds the paired bootstrap (`bootstrap.compare`: overall, three sizes,
the dataset's slices, 1,000 resamples). For the default data and for a test split of
`--synthetic` images drawn by the project's generator it records: today's step, the
added seconds (keeping records + the bootstrap) and their ratio, and the bootstrap
alone at several images x resamples (the aim: linear). Aim: <= 10 s added on the
default data. Results are appended to bench/out/gate.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "src"))

from mlflow_cv_yolo.data.build import build_dataset  # noqa: E402
from mlflow_cv_yolo.decide import bootstrap  # noqa: E402
from mlflow_cv_yolo.decide import detection_stats as stats  # noqa: E402
from mlflow_cv_yolo.train.per_image import evaluate_per_image  # noqa: E402
from mlflow_cv_yolo.train.training import evaluate  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def measure(data: Path, candidate: Path, champion: Path, *, imgsz: int, device: str, work: Path) -> dict:
    common = dict(data=data, imgsz=imgsz, project=work, device=device)
    today = 0.0
    for weights in (candidate, champion):
        for split in ("val", "test"):
            today += timed(evaluate, weights, split=split, name=f"plain-{split}", **common)[1]
    (_, cand), t_cand = timed(evaluate_per_image, candidate, split="test", name="kept-cand", **common)
    (_, champ), t_champ = timed(evaluate_per_image, champion, split="test", name="kept-champ", **common)
    plain_test = sum(
        timed(evaluate, w, split="test", name=f"plain-again-{i}", **common)[1]
        for i, w in enumerate((candidate, champion))
    )
    slices = stats.load_slices(stats.slices_path(data), stats.dataset_names(data))
    rows, t_compare = timed(bootstrap.compare, cand, champ, slices)
    added = (t_cand + t_champ - plain_test) + t_compare
    return {
        "data": str(data),
        "images": len(cand),
        "predictions": sum(len(r.conf) for r in cand) + sum(len(r.conf) for r in champ),
        "objects": rows[0].objects,
        "today_s": round(today, 2),
        "keeping_records_s": round(t_cand + t_champ - plain_test, 2),
        "bootstrap_s": round(t_compare, 2),
        "added_s": round(added, 2),
        "added_ratio": round(added / today, 3),
        "overall": [rows[0].delta, rows[0].low, rows[0].high],
    }


def scaling(records: list, *, resamples: tuple[int, ...] = (250, 500, 1000, 2000)) -> list[dict]:
    """The overall view's bootstrap alone, at growing images x resamples."""
    out = []
    for n in (len(records) // 4, len(records) // 2, len(records)):
        view = stats.view(records[:n])
        for r in resamples:
            weights = bootstrap.resample_weights(n, r)
            _, seconds = timed(stats.weighted_map, view, weights)
            out.append(
                {
                    "images": n,
                    "resamples": r,
                    "s": round(seconds, 3),
                    "us_per_image_resample": round(seconds / (n * r) * 1e6, 3),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--champion", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "coco_persons.yaml")
    parser.add_argument("--synthetic", type=int, default=500, help="test images of the synthetic split (0: skip)")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        work = Path(tmp)
        sets = [args.data]
        if args.synthetic:
            yaml_path = work / "synthetic.yaml"
            build_dataset(
                "synthetic",
                work / "synthetic",
                yaml_path,
                counts=(1, 1, args.synthetic),
                imgsz=args.imgsz,
                log=lambda _: None,
            )
            sets.append(yaml_path)
        for data in sets:
            row = measure(data, args.candidate, args.champion, imgsz=args.imgsz, device=args.device, work=work)
            if data != args.data:
                _, cand = evaluate_per_image(
                    args.candidate,
                    data=data,
                    imgsz=args.imgsz,
                    split="test",
                    project=work,
                    name="scale",
                    device=args.device,
                )
                row["scaling"] = scaling(cand)
            print(json.dumps(row))
            results.append(row)
    with open(OUT / "gate.jsonl", "a") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
