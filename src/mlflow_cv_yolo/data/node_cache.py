"""The session's dataset where a Ray task trains: the controller's own files when the
node shares its file system, else the locked version fetched by its DVC digest from
the DVC remote on the stack's S3 into a cache on the node, checked, and kept there
for every later run on that node."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow_cv_yolo.errors import DataUnreachable

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlflow-cv-yolo" / "datasets"
VERIFIED = ".verified"


@dataclass(frozen=True)
class DataSource:
    """What a node needs to find the session's dataset: plain values, no secret (the
    DVC remote names a credentials file, which a node reads where it has one)."""

    yaml_path: str               # the dataset yaml, as the controller sees it
    yaml_text: str
    md5: str | None = None       # dvc.lock's digest of the dataset folder ("<32 hex>.dir")
    folder: str | None = None    # that folder's path relative to the yaml's folder
    remote_url: str | None = None      # s3://bucket/dvc
    endpoint_url: str | None = None
    credential_path: str | None = None

    @property
    def fetchable(self) -> bool:
        return bool(self.md5 and self.folder and self.remote_url and self.endpoint_url)


def locate(source: DataSource, cache: Path = CACHE) -> Path:
    """The dataset yaml to train from on this node."""
    if Path(source.yaml_path).is_file():
        return Path(source.yaml_path)
    if not source.fetchable:
        raise DataUnreachable(f"dataset {source.yaml_path} is not on this node and the session has no DVC remote "
                              "to fetch it from (no S3 in this stack, or --data outside DVC): only nodes that "
                              "share the controller's file system can train")
    return fetch(source, cache)


def fetch(source: DataSource, cache: Path = CACHE) -> Path:
    """Pull the dataset `source.md5` names into `cache/<md5>` (once per node: a later
    call finds it verified), check every file against the digest, and write the yaml
    beside it; returns the yaml's path."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    target = cache / source.md5
    yaml_path = target / "data.yaml"
    if (target / VERIFIED).is_file():
        return yaml_path
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".{source.md5}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        try:
            repo = Repo.init(str(work), no_scm=True)
            with repo.config.edit("local") as conf:
                conf["remote"]["stack"] = {"url": source.remote_url, "endpointurl": source.endpoint_url,
                                           **({"credentialpath": source.credential_path}
                                              if source.credential_path else {})}
                conf["core"]["remote"] = "stack"
            (work / "data.dvc").write_text(yaml.safe_dump(
                {"outs": [{"md5": source.md5, "path": source.folder, "hash": "md5"}]}))
            repo = Repo(str(work))
            repo.pull(targets=[str(work / "data.dvc")])
        except DvcException as exc:
            raise DataUnreachable(f"dataset {source.md5}: `dvc pull` from {source.remote_url} at "
                                  f"{source.endpoint_url} failed on this node: {exc}") from None
        changed = mismatches(work / ".dvc" / "cache", source.md5, work / source.folder)
        if changed:
            raise DataUnreachable(f"dataset {source.md5}: the files pulled from {source.remote_url} do not match "
                                  f"its listing: {', '.join(changed[:5])}")
        (work / "data.yaml").write_text(source.yaml_text)
        shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)  # the checked-out files are what trains
        (work / VERIFIED).write_text(source.md5 + "\n")
        try:
            work.rename(target)
        except OSError:  # another task on this node got there first
            if not (target / VERIFIED).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return yaml_path


def mismatches(dvc_cache: Path, md5: str, folder: Path) -> list[str]:
    """Every file of `folder` hashed again against the listing the digest names (DVC's
    `.dir` object, fetched by that digest): what is missing, extra or altered."""
    listing = json.loads((dvc_cache / "files" / "md5" / md5[:2] / md5[2:]).read_text())
    expected = {entry["relpath"]: entry["md5"] for entry in listing}
    present = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    problems = [f"{name}: missing" for name in sorted(expected.keys() - present.keys())]
    problems += [f"{name}: not in the dataset" for name in sorted(present.keys() - expected.keys())]
    problems += [f"{name}: altered" for name in sorted(expected.keys() & present.keys())
                 if hashlib.md5(present[name].read_bytes()).hexdigest() != expected[name]]
    return problems
