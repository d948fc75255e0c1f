"""Data lineage: is the dataset on disk the one `dvc.lock` records, where is it kept
(a DVC remote on the stack's S3 bucket), and the MLflow dataset input naming it.

The dataset digest used everywhere is the md5 that `dvc.lock` records for the output,
exactly as written there: `<32 hex>.dir` for a folder (36 characters, the most MLflow
stores). `grep <digest> dvc.lock` finds it; `dvc pull` at the commit that wrote it
brings the files back.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvc.exceptions import DvcException
from dvc.repo import Repo
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow_cv_yolo.errors import LineageError, StaleDataError

DATASET_NAME = "tiny_coco"
DEFAULT_OUT = "data/tiny_coco"


@dataclass(frozen=True)
class DatasetState:
    clean: bool
    md5: str | None  # what dvc.lock records for the output, e.g. "6e65…f0.dir"; None if nothing
    problems: list[str] = field(default_factory=list)


def check_dataset(project_root: Path, out: str = DEFAULT_OUT) -> DatasetState:
    """Compare the files of `out` with the hash dvc.lock records for it (DVC's own
    data status: every file is hashed, nothing is trusted from timestamps alone)."""
    root, out = Path(project_root), out.strip("/")
    if not (root / "dvc.yaml").is_file():
        return DatasetState(False, None, [f"{root / 'dvc.yaml'}: not found, so {out} is not versioned"])
    try:
        with Repo(str(root)) as repo:
            output = _output(repo, out)
            if output is None:
                return DatasetState(False, None, [f"{out}: not an output of any stage in dvc.yaml"])
            md5 = output.hash_info.value if output.hash_info else None
            if md5 is None:
                return DatasetState(False, None, [f"{out}: dvc.lock records no hash for it"])
            if not (root / out).exists():
                return DatasetState(False, md5, [f"{out}: missing (dvc.lock records {md5})"])
            changes = repo.data_status(targets=[out], granular=True).get("uncommitted", {})
    except DvcException as exc:
        return DatasetState(False, None, [f"{out}: dvc cannot read the project at {root}: {exc}"])
    problems = [f"{path}: {kind} since dvc.lock" for kind in ("modified", "added", "deleted", "unknown")
                for path in changes.get(kind, []) if path.rstrip("/") != out]
    if any(changes.values()) and not problems:
        problems = [f"{out}: differs from dvc.lock ({md5})"]
    return DatasetState(not problems, md5, problems)


def require_clean(project_root: Path, out: str = DEFAULT_OUT) -> DatasetState:
    state = check_dataset(project_root, out)
    if not state.clean:
        shown = "; ".join(state.problems[:5]) + (f"; and {len(state.problems) - 5} more"
                                                 if len(state.problems) > 5 else "")
        raise StaleDataError(f"{out} is not the dataset dvc.lock records: {shown}. Run `dvc repro` to rebuild "
                             f"it, or `dvc pull` to fetch the recorded one")
    return state


def _output(repo: Repo, out: str):
    for output in repo.index.outs:
        if Path(output.def_path).as_posix().strip("/") == out:
            return output
    return None


def configure_remote(project_root: Path, *, url: str, endpoint_url: str, credential_path: Path,
                     name: str = "stack", region: str = "us-east-1") -> None:
    """Make `name` (an S3 `url` such as s3://bucket/dvc) the default remote, in
    .dvc/config.local (DVC keeps it out of git; the committed .dvc/config never
    changes with the stack). The keys stay out of the checkout: the remote names
    `credential_path`, an AWS credentials file (profile "default") under the stack's
    folder, so a user's own `dvc pull` finds them too. Replaces the whole remote, so
    keys an earlier version wrote there are dropped."""
    try:
        with Repo(str(project_root)) as repo, repo.config.edit("local") as conf:
            conf["remote"][name] = {"url": url, "endpointurl": endpoint_url,
                                    "credentialpath": str(Path(credential_path).absolute()), "region": region,
                                    "connect_timeout": 5, "read_timeout": 60}
            conf["core"]["remote"] = name
    except DvcException as exc:
        raise LineageError(f"dvc remote {name} ({url}) in {project_root}: cannot configure: {exc}") from None


def remote_url(project_root: Path, name: str | None = None) -> str | None:
    """URL of remote `name`, or of the default remote; None when there is none."""
    try:
        with Repo(str(project_root)) as repo:
            name = name or repo.config["core"].get("remote")
            return repo.config["remote"].get(name, {}).get("url") if name else None
    except DvcException:  # not a DVC project: no remote
        return None


def push(project_root: Path, remote: str | None = None, targets: list[str] | None = None) -> int:
    """Push the cached outputs (`targets`: only those outputs) to `remote` (default
    remote if None); returns files pushed."""
    try:
        with Repo(str(project_root)) as repo:
            return repo.push(targets=targets, remote=remote)
    except DvcException as exc:
        raise LineageError(f"dvc push from {project_root} to {remote or 'the default remote'} failed: "
                           f"{exc} (is the stack's S3 running?)") from None


def pull(project_root: Path, remote: str | None = None) -> dict[str, Any]:
    """Fetch the outputs dvc.lock records from `remote` and check them out."""
    try:
        with Repo(str(project_root)) as repo:
            return repo.pull(remote=remote)
    except DvcException as exc:
        raise LineageError(f"dvc pull into {project_root} from {remote or 'the default remote'} failed: "
                           f"{exc} (is the stack's S3 running, and was the data pushed?)") from None


def lock_commit(project_root: Path) -> str | None:
    """The last git commit that touched dvc.lock; None outside git or if none did."""
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%H", "--", "dvc.lock"], cwd=project_root,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _git_origin(project_root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=project_root,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


class DvcDatasetSource(DatasetSource):
    """Where a DVC-versioned dataset lives: the DVC remote's URL, the git commit of the
    dvc.lock that records it, its path in the repository and the repository's git
    origin (None without one). Stored on the run as source type "dvc" with the JSON
    source {"url", "rev", "path", "repo"}."""

    def __init__(self, url: str | None, rev: str | None, path: str = DEFAULT_OUT, repo: str | None = None):
        self.url, self.rev, self.path, self.repo = url, rev, path, repo

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, dst_path=None) -> str:
        raise NotImplementedError(f"to get {self.path} back: `git checkout {self.rev} -- dvc.lock` in the "
                                  f"project, then `dvc pull {self.path}` (remote {self.url})")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built explicitly, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("DvcDatasetSource is built explicitly")

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "rev": self.rev, "path": self.path, "repo": self.repo}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict.get("url"), source_dict.get("rev"), source_dict.get("path", DEFAULT_OUT),
                   source_dict.get("repo"))


register_dataset_source(DvcDatasetSource)  # so that mlflow.data.get_source() reads it back


def dataset_input(project_root: Path, md5: str, remote_url: str | None, lock_commit: str | None, *,
                  out: str = DEFAULT_OUT) -> MetaDataset:
    """The dataset to pass to `mlflow.log_input(ds, context="training")`: name
    "tiny_coco", digest the dvc.lock md5 (see the module docstring), source a
    `DvcDatasetSource`. Of `project_root` only its git origin is recorded: the local
    path differs per machine."""
    source = DvcDatasetSource(remote_url, lock_commit, out, _git_origin(project_root))
    return MetaDataset(source, name=DATASET_NAME, digest=md5)


def ensure_built(project_root: Path, log=print, out: str = DEFAULT_OUT) -> None:
    """Build the default dataset with `dvc repro` when it is absent (a fresh clone)."""
    if (Path(project_root) / out).is_dir():
        return
    import os
    import sys

    log(f"{out} is missing: building it with `dvc repro build_dataset`")
    # The stage runs `python -m mlflow_cv_yolo`: this interpreter's, not whatever is first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "build_dataset"], cwd=project_root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout[-1500:] + done.stderr[-1500:]).strip().splitlines()[-5:]
        raise LineageError(f"`dvc repro build_dataset` failed ({done.returncode}): {' | '.join(tail)}")
    for line in done.stdout.splitlines():
        if "source" in line.lower():
            log(line.strip())


def publish(project_root: Path, state: DatasetState, *, url: str, endpoint_url: str, credential_path: Path,
            log=print, out: str = DEFAULT_OUT) -> str:
    """Make the stack's S3 the DVC remote and push the locked data `out` there, so any run's
    data can be pulled back by its digest; returns the remote URL."""
    configure_remote(project_root, url=url, endpoint_url=endpoint_url, credential_path=credential_path)
    if state.clean:
        # The dataset alone: the other stages' outputs (a checkpoint not built in this
        # clone) would each print DVC's "missing cache files" warning.
        push(project_root, targets=[out])
        log(f"dataset pushed to the DVC remote {url} at {endpoint_url}")
    return url
