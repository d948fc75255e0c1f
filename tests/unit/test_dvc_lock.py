"""dvc.lock matches the code: no stage's dependencies changed since it was locked.
A dependency that another stage builds (data/synthetic for the checkpoint) is that
stage's business: it is missing in a fresh clone, and its bytes may differ by CPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[2]


def test_no_stage_has_changed_deps():
    with contextlib.chdir(REPO), Repo(str(REPO)) as repo:
        built = {str(out.def_path) for stage in repo.index.stages for out in stage.outs}
        status = repo.status()
    changed = {
        stage: {path: why for path, why in entry["changed deps"].items() if path not in built}
        for stage, entries in status.items()
        for entry in entries
        if isinstance(entry, dict) and "changed deps" in entry
    }
    assert {stage: deps for stage, deps in changed.items() if deps} == {}
