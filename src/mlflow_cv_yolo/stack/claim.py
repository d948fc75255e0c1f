"""Who uses a stack folder: a session (or `ui`) claims it before starting its
services and releases it when it stops them.

Two sessions on one folder would stop each other's services (each start stops what
the pid files name). And a claim whose holder is gone tells the next session that a
controller died without ending its runs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.errors import StackInUse

CLAIM_FILE = "owner.json"


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
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (FileNotFoundError, ValueError):
            pass


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


def claim(folder: Path, *, session: str, what: str) -> Claim:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    previous = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = json.loads(path.read_text())
    if previous and previous.get("pid") != os.getpid() and _alive(int(previous.get("pid", 0))):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(previous.get("since", 0)))
        raise StackInUse(
            f"{folder} is in use by {previous.get('what', 'another session')} (pid {previous['pid']}, "
            f"since {since}): wait for it to end, or pass another --stack-dir"
        )
    owner = {"pid": os.getpid(), "session": session, "what": what, "since": time.time()}
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(json.dumps(owner))
    os.replace(part, path)
    return Claim(path, owner, previous)
