"""Who uses a stack folder: a session or `ui` claims it before starting its services
and releases it when it stops them; a stack records there the URL it serves.

Two holders on one folder would stop each other's services (each start stops what
the pid files name): a second one is refused, and `ui` on a folder a live session
holds shows that session's server instead. A claim whose holder is gone tells the
next session that a controller died without ending its runs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.errors import StackInUse

CLAIM_FILE = "owner.json"
SERVING_FILE = "serving.json"


def _write(path: Path, record: dict) -> None:
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(json.dumps(record))
    os.replace(part, path)


def _read(path: Path) -> dict | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else None
    return None


@dataclass(frozen=True)
class Claim:
    path: Path
    owner: dict
    previous: dict | None  # the record of a holder that died without releasing the folder

    def leave(self, unfinished: str) -> None:
        """Keep the folder's claim with why its holder could not end its runs: the next
        session to claim the folder (its holder gone) ends them."""
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.write_text(json.dumps({**self.owner, "unfinished": unfinished}))
        except (FileNotFoundError, ValueError):
            pass

    def release(self) -> None:
        """Unclaim the folder; a dead session's record this holder carried is put back
        for the next session to find."""
        record = _read(self.path)
        if record is None or record.get("pid") != self.owner["pid"]:
            return
        if self.owner.get("carries"):
            _write(self.path, self.owner["carries"])
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A pid is reused after its process exits: only a Python process can be a holder.
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def holder(folder: Path) -> dict | None:
    """The record of the live process that holds `folder`, or None."""
    record = _read(folder / CLAIM_FILE)
    if record and record.get("pid") != os.getpid() and _alive(int(record.get("pid", 0))):
        return record
    return None


def in_use(folder: Path, record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return f"{folder} is in use by {record.get('what', 'another session')} (pid {record['pid']}, since {since})"


def claim(folder: Path, *, session: str | None, what: str) -> Claim:
    """Claim `folder` for this process (`session`: the experiment session's id; None
    for `ui`, which keeps a dead session's record to hand back on release)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    live = holder(folder)
    if live:
        raise StackInUse(f"{in_use(folder, live)}: wait for it to end, or pass another --stack-dir")
    previous = _read(path)
    if previous and previous.get("pid") == os.getpid():
        previous = None
    if previous and not previous.get("session") and previous.get("carries"):
        previous = previous["carries"]  # a `ui` killed while it carried a dead session's record
    owner = {"pid": os.getpid(), "session": session, "what": what, "since": time.time()}
    if session is None and previous and previous.get("session"):
        owner["carries"] = previous
    _write(path, owner)
    return Claim(path, owner, previous)


def record_serving(folder: Path, tracking_uri: str) -> None:
    """What a started stack serves, for `ui` to show while another process holds it."""
    _write(folder / SERVING_FILE, {"pid": os.getpid(), "tracking_uri": tracking_uri})


def forget_serving(folder: Path) -> None:
    record = _read(folder / SERVING_FILE)
    if record and record.get("pid") == os.getpid():
        (folder / SERVING_FILE).unlink(missing_ok=True)


def serving(folder: Path, record: dict) -> str | None:
    """The tracking URI the live holder `record` serves, once its stack is up."""
    served = _read(folder / SERVING_FILE)
    return served.get("tracking_uri") if served and served.get("pid") == record.get("pid") else None
