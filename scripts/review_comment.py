"""Put a session's review.md where the review happens: appended to the job's step
summary ($GITHUB_STEP_SUMMARY) and, on a pull request, as one comment that a re-run
edits instead of adding another (found by review.md's hidden marker).

    python scripts/review_comment.py reports/            # the newest reports/*/review.md
    python scripts/review_comment.py reports/S/review.md

Talks to GitHub through `gh api` (GH_TOKEN in the environment); reads the pull
request from $GITHUB_EVENT_PATH and the repository from $GITHUB_REPOSITORY. Standard
library only: the workflow runs it without installing the project. A comment GitHub
refuses (a fork's read-only token) is a warning, not a failure: the summary is written."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MARKER = "<!-- cv-yolo-review -->"  # mlflow_cv_yolo.present.review.MARKER


def find_review(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*/review.md"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"review_comment: no */review.md under {path}")
    return found[-1]


def body(review: Path, env: dict[str, str]) -> str:
    text = review.read_text(encoding="utf-8").rstrip() + "\n"
    if MARKER not in text:
        text = f"{MARKER}\n{text}"
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        text += f"\nReport and decision record: the `experiment-report` artifact of [this workflow run]({run}).\n"
    return text


def pull_request(env: dict[str, str]) -> int | None:
    event = env.get("GITHUB_EVENT_PATH")
    if not event or not Path(event).is_file():
        return None
    number = (json.loads(Path(event).read_text()).get("pull_request") or {}).get("number")
    return int(number) if number else None


def gh(*args: str, payload: dict | None = None) -> object:
    """One `gh api` call; the payload goes through a file, never the command line."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload or {}, f)
    try:
        extra = ["--input", f.name] if payload is not None else []
        done = subprocess.run(["gh", "api", *args, *extra], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"gh api {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout or "null")


def existing_comment(repo: str, number: int) -> int | None:
    """The id of the pull request's comment that carries the marker, if any."""
    page = 1
    while True:
        comments = gh(f"repos/{repo}/issues/{number}/comments?per_page=100&page={page}")
        if not comments:
            return None
        for c in comments:
            if MARKER in (c.get("body") or ""):
                return int(c["id"])
        page += 1


def post(repo: str, number: int, text: str) -> str:
    found = existing_comment(repo, number)
    if found is None:
        gh("--method", "POST", f"repos/{repo}/issues/{number}/comments", payload={"body": text})
        return f"commented on pull request #{number}"
    gh("--method", "PATCH", f"repos/{repo}/issues/comments/{found}", payload={"body": text})
    return f"updated comment {found} on pull request #{number}"


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("review", type=Path, help="review.md, or a reports folder (its newest */review.md)")
    args = parser.parse_args(argv)
    text = body(find_review(args.review), env)
    if env.get("GITHUB_STEP_SUMMARY"):
        with open(env["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(text + "\n")
    number, repo = pull_request(env), env.get("GITHUB_REPOSITORY")
    if number is None or not repo:
        print("review_comment: not a pull request: step summary only")
        return 0
    try:
        print(f"review_comment: {post(repo, number, text)}")
    except RuntimeError as exc:
        print(f"::warning::review_comment: could not comment: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
