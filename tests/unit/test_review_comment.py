"""The workflow's review step (scripts/review_comment.py) against a stand-in `gh` on
PATH that keeps the pull request's comments in a file and records every call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "review_comment.py"
MARKER = "<!-- cv-yolo-review -->"

STAND_IN = """#!{python}
import json, os, sys
state = os.environ["GH_STAND_IN"]
data = json.load(open(state))
args = sys.argv[1:]
payload = json.load(open(args[args.index("--input") + 1])) if "--input" in args else None
data["calls"].append({{"args": [a for a in args if not a.endswith(".json")], "payload": payload}})
method = args[args.index("--method") + 1] if "--method" in args else "GET"
path = next(a for a in args[1:] if a.startswith("repos/"))
out = None
if method == "GET":
    page = int(path.rsplit("page=", 1)[1])
    out = data["comments"] if page == 1 else []
elif method == "POST":
    out = {{"id": 100 + len(data["comments"]), "body": payload["body"]}}
    data["comments"].append(out)
elif method == "PATCH":
    cid = int(path.rsplit("/", 1)[1])
    out = next(c for c in data["comments"] if c["id"] == cid)
    out["body"] = payload["body"]
json.dump(data, open(state, "w"))
print(json.dumps(out))
"""


def run(tmp_path: Path, review: str, event: dict | None = None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        gh = bin_dir / "gh"
        gh.write_text(STAND_IN.format(python=sys.executable))
        gh.chmod(0o755)
        (tmp_path / "state.json").write_text(json.dumps({"calls": [], "comments": [{"id": 7, "body": "LGTM"}]}))
    (tmp_path / "reports" / "s1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "reports" / "s1" / "review.md").write_text(review)
    (tmp_path / "event.json").write_text(json.dumps(event if event is not None else {"pull_request": {"number": 12}}))
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GH_STAND_IN": str(tmp_path / "state.json"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_EVENT_PATH": str(tmp_path / "event.json"),
        "GITHUB_REPOSITORY": "octo/cv-yolo",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "42",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "reports")], env=env, capture_output=True, text=True, timeout=60
    )


def state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state.json").read_text())


LINK = (
    "\nReport and decision record: the `experiment-report` artifact of "
    "[this workflow run](https://github.com/octo/cv-yolo/actions/runs/42).\n"
)


def test_a_second_run_edits_the_first_comment(tmp_path):
    first = run(tmp_path, f"{MARKER}\n## Promotion gate: REJECTED\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "review_comment: commented on pull request #12\n"
    second = run(tmp_path, f"{MARKER}\n## Promotion gate: PROMOTED\n")
    assert second.stdout == "review_comment: updated comment 101 on pull request #12\n"
    s = state(tmp_path)
    assert s["comments"] == [
        {"id": 7, "body": "LGTM"},
        {"id": 101, "body": f"{MARKER}\n## Promotion gate: PROMOTED\n{LINK}"},
    ]
    assert [c["args"] for c in s["calls"]] == [
        ["api", "repos/octo/cv-yolo/issues/12/comments?per_page=100&page=1"],
        ["api", "repos/octo/cv-yolo/issues/12/comments?per_page=100&page=2"],
        ["api", "--method", "POST", "repos/octo/cv-yolo/issues/12/comments", "--input"],
        ["api", "repos/octo/cv-yolo/issues/12/comments?per_page=100&page=1"],
        ["api", "--method", "PATCH", "repos/octo/cv-yolo/issues/comments/101", "--input"],
    ]
    summary = (tmp_path / "summary.md").read_text()
    assert summary == f"{MARKER}\n## Promotion gate: REJECTED\n{LINK}\n{MARKER}\n## Promotion gate: PROMOTED\n{LINK}\n"


def test_outside_a_pull_request_only_the_step_summary_is_written(tmp_path):
    done = run(tmp_path, f"{MARKER}\n## Promotion gate: PROMOTED\n", event={"ref": "refs/heads/main"})
    assert done.stdout == "review_comment: not a pull request: step summary only\n"
    assert state(tmp_path)["calls"] == []
    assert (tmp_path / "summary.md").read_text() == f"{MARKER}\n## Promotion gate: PROMOTED\n{LINK}\n"


def test_the_workflow_runs_this_script_in_the_only_job_that_may_write_to_pull_requests():
    import yaml

    flow = yaml.safe_load((REPO / ".github" / "workflows" / "experiments.yml").read_text())
    assert flow["permissions"] == {}
    assert flow["jobs"]["grid"]["permissions"] == {"contents": "read"}
    review = flow["jobs"]["review"]
    assert (review["needs"], review["if"]) == ("grid", "always()")
    assert review["permissions"] == {"contents": "read", "pull-requests": "write"}
    (step,) = [s for s in review["steps"] if "run" in s]
    assert step["run"] == "python3 scripts/review_comment.py reports/"
    assert step["env"] == {"GH_TOKEN": "${{ github.token }}"}
    uses = [s["uses"] for job in flow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert all(len(u.split("@")[1]) == 40 for u in uses), uses  # pinned by commit


def test_the_script_looks_for_the_marker_review_md_writes():
    from mlflow_cv_yolo.present.review import MARKER as WRITTEN

    assert f'MARKER = "{WRITTEN}"' in SCRIPT.read_text() and WRITTEN == MARKER
