"""The stack folder's claim between sessions and `ui` (real files, real processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlflow_cv_yolo.errors import StackInUse
from mlflow_cv_yolo.stack.claim import CLAIM_FILE, claim, holder, record_serving, serving


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_and_its_served_url_shown(tmp_path):
    script = "import time; print('up', flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "up\n"  # its command line is python's by then
        record = {"pid": other.pid, "session": "s1", "what": "an experiment session", "since": 0}
        (tmp_path / CLAIM_FILE).write_text(json.dumps(record))
        assert holder(tmp_path) == record
        assert serving(tmp_path, record) is None  # its stack is not up yet
        (tmp_path / "serving.json").write_text(json.dumps({"pid": other.pid, "tracking_uri": "http://h:1"}))
        assert serving(tmp_path, record) == "http://h:1"
        with pytest.raises(StackInUse, match=r"is in use by an experiment session \(pid \d+, since "):
            claim(tmp_path, session=None, what="`ui`")
    finally:
        other.kill()
        other.wait()
    assert holder(tmp_path) is None


def test_ui_hands_back_a_dead_sessions_record_for_the_next_session(tmp_path):
    dead = {"pid": dead_pid(), "session": "s1", "what": "an experiment session", "since": 0}
    (tmp_path / CLAIM_FILE).write_text(json.dumps(dead))
    ui = claim(tmp_path, session=None, what="`ui`")
    assert ui.owner["carries"] == dead
    ui.release()
    assert json.loads((tmp_path / CLAIM_FILE).read_text()) == dead
    session = claim(tmp_path, session="s2", what="an experiment session")
    assert session.previous == dead  # the next session still marks s1's runs
    session.release()
    assert not (tmp_path / CLAIM_FILE).exists()


def test_the_serving_record_names_the_stacks_own_process(tmp_path):
    record_serving(tmp_path, "http://127.0.0.1:5000")
    mine = json.loads((tmp_path / "serving.json").read_text())
    assert serving(tmp_path, {"pid": mine["pid"]}) == "http://127.0.0.1:5000"
    assert serving(tmp_path, {"pid": dead_pid()}) is None  # another holder's stack would serve elsewhere
