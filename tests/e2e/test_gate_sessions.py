"""The detection gate with real sessions on the real local stack, on the heldout
synthetic set (where the project checkpoint detects: val mAP50-95 about 0.35 at 96 px):
a champion fine-tuned with lr0 0.001 is promoted to production, then a challenger
with worse weights (lr0 1.0, far too high: it loses what the checkpoint knew). Its
improvement margin is waived (--min-improvement -1), so what stops it is the sure
regression on the gated size and slice rows (`medium`: 61 objects, `slice groups`:
53; data/heldout.slices.yaml)."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from helpers import REPO, dvc_repro, run_suite, session_of
from mlflow.tracking import MlflowClient

HELDOUT = REPO / "data" / "heldout.yaml"
CHECKPOINT = REPO / "data" / "weights" / "yolov8n-synthetic.pt"
SIZE = ("--set", "epochs=1", "--set", "imgsz=96", "--set", "seed=1", "--set", "batch=8")


@pytest.fixture(scope="module")
def challenged(tmp_path_factory, local_stack):
    if not HELDOUT.is_file():
        dvc_repro("heldout_dataset")
    tmp = tmp_path_factory.mktemp("gate")
    env = {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}
    model = f"gate-{uuid.uuid4().hex[:6]}"
    common = ("--data", str(HELDOUT), "--model", str(CHECKPOINT), *SIZE, "--registered-model", model, "--min-map", "0")
    champion = run_suite(
        *common, "--set", "lr0=0.001", "--promote-to", "production", env=env, tmp_path=tmp / "champion"
    )
    assert champion.returncode == 0, champion.stdout[-4000:] + champion.stderr[-3000:]
    challenger = run_suite(*common, "--set", "lr0=1.0", "--min-improvement", "-1", env=env, tmp_path=tmp / "challenger")
    folder = tmp / "challenger" / "reports" / session_of(challenger.stdout)
    client = MlflowClient(local_stack.tracking_uri)
    return {
        "production": client.get_model_version_by_alias(model, "production").version,
        "client": client,
        "model": model,
        "champion": champion,
        "challenger": challenger,
        "folder": folder,
        "record": json.loads((folder / "decision.json").read_text()),
    }


def test_a_slice_regression_blocks_the_challenger_in_one_line(challenged):
    result, record, client, model = (challenged[k] for k in ("challenger", "record", "client", "model"))
    assert result.returncode == 1, result.stdout[-4000:]
    assert record["outcome"] == "rejected"
    assert [c["name"] for c in record["criteria"] if not c["passed"]] == ["no regression by size or slice"]
    # The rows whose whole interval lies below -max_drop, as the Δ table recorded them.
    worse = [d for d in record["deltas"] if d["gated"] and d["kind"] != "overall" and d["high"] < -0.01]
    assert "slice groups" in [d["name"] for d in worse]
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("promotion gate FAILED: ")]
    assert line == (
        "promotion gate FAILED: no regression by size or slice: "
        + "; ".join(f"{d['name']} Δ {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" for d in worse)
        + " (upper bound below -0.0100)"
    )
    production = client.get_model_version_by_alias(model, "production")
    assert [v.version for v in client.search_model_versions(f"name = '{model}'")] == [production.version]


def test_the_review_names_the_regression_and_draws_the_flipped_images(challenged):
    folder, record = challenged["folder"], challenged["record"]
    review = (folder / "review.md").read_text().splitlines()
    assert review[:2] == ["<!-- cv-yolo-review -->", "## Promotion gate: REJECTED"]
    row = next(line for line in review if line.startswith("| no regression by size or slice |"))
    assert row.split(" | ")[3] == "**FAIL**"
    # The flipped images: listed in review.md, drawn beside it (flip_NN_<image>.png).
    listed = [line.split(" | ")[0].lstrip("| ") for line in review if re.match(r"\| \S+\.jpg \|", line)]
    drawn = sorted(p.name for p in folder.glob("flip_*.png"))
    assert 1 <= len(listed) <= 12
    assert drawn == [f"flip_{i:02d}_{name.removesuffix('.jpg')}.png" for i, name in enumerate(listed)]
    assert record["champion"]["version"] == challenged["production"]


def test_every_image_of_the_challengers_report_loads_in_chromium(challenged, browser):
    page = browser.page
    page.goto((challenged["folder"] / "report.html").as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    flips = [alt for alt, *_ in images if re.fullmatch(r"\S+\.jpg: candidate \d+, champion \d+", alt)]
    assert flips, [alt for alt, *_ in images]
    for alt, complete, width, height in images:
        assert complete and width > 100 and height > 100, (alt, complete, width, height)
    assert browser.errors == []
