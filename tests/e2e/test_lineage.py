"""DVC lineage against real things: a git + DVC project in a temporary folder running
the project's own dvc.yaml, a real S3 server (moto's) for the remote, and a real MLflow
store for the dataset input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml
from dvc.repo import Repo
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.data import lineage
from mlflow_cv_yolo.stack.base import write_aws_credentials

PROJECT = Path(__file__).resolve().parents[2]
SMALL = {"source": "synthetic", "train": 6, "val": 2, "test": 2, "imgsz": 64, "seed": 0}


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def repro(root: Path, **kwargs) -> list[str]:
    """`dvc repro` in-process; DVC's reproduce only finds its stages from inside the repo."""
    with contextlib.chdir(root), Repo(str(root)) as repo:
        return [stage.addressing for stage in repo.reproduce(**kwargs)]


def lock_md5(root: Path, out: str = "data/tiny_coco") -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["build_dataset"]["outs"] if o["path"] == out)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The project's dataset stage and builder sources with small params, reproduced and
    committed. The stage runs `python`: this interpreter's."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "project"
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["build_dataset"]
    for dep in stage["deps"]:
        (root / dep).parent.mkdir(parents=True, exist_ok=True)
        if (PROJECT / dep).is_dir():  # the shipped COCO person cut
            shutil.copytree(PROJECT / dep, root / dep, ignore=shutil.ignore_patterns("*.cache"))
        else:
            shutil.copy(PROJECT / dep, root / dep)
    # The dataset stage alone: the checkpoint stages train a model, which is not lineage's business.
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"build_dataset": stage}}))
    (root / "params.yaml").write_text(yaml.safe_dump({"dataset": SMALL}))
    git(root, "init", "-q")
    Repo.init(str(root)).close()
    with Repo(str(root)) as repo, repo.config.edit("local") as conf:  # DVC's site cache: in the test's folder
        conf["core"]["site_cache_dir"] = str(tmp_path / "dvc-site-cache")
    repro(root)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dataset")
    return root


def test_a_fresh_build_is_clean_and_its_md5_is_the_lock(project):
    state = lineage.check_dataset(project)
    assert state.clean and state.problems == []
    assert state.md5 == lock_md5(project) and state.md5.endswith(".dir")
    assert lineage.require_clean(project).md5 == state.md5
    assert lineage.lock_commit(project) == git(project, "rev-parse", "HEAD")
    assert lineage.lock_commit(project.parent) is None  # not a git repository


def test_repro_rebuilds_only_when_an_input_changed_and_the_same_inputs_give_the_same_lock(project):
    lock = (project / "dvc.lock").read_bytes()
    assert repro(project) == []  # nothing changed: nothing ran
    assert repro(project, force=True) == ["build_dataset"]
    assert (project / "dvc.lock").read_bytes() == lock  # rebuilt from scratch: same hashes
    (project / "params.yaml").write_text(yaml.safe_dump({"dataset": {**SMALL, "seed": 1}}))
    assert repro(project) == ["build_dataset"]
    assert lock_md5(project) != yaml.safe_load(lock)["stages"]["build_dataset"]["outs"][0]["md5"]


def test_edited_missing_or_unlocked_data_is_stale(project):
    label = next((project / "data/tiny_coco/labels/train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    state = lineage.check_dataset(project)
    assert not state.clean and state.md5 == lock_md5(project)
    assert state.problems == [f"{label.relative_to(project).as_posix()}: modified since dvc.lock"]
    with pytest.raises(lineage.StaleDataError) as error:
        lineage.require_clean(project)
    assert label.name in str(error.value)
    assert "`dvc repro`" in str(error.value) and "`dvc pull`" in str(error.value)

    shutil.rmtree(project / "data/tiny_coco")
    assert lineage.check_dataset(project).problems == [
        f"data/tiny_coco: missing (dvc.lock records {lock_md5(project)})"
    ]
    (project / "dvc.lock").unlink()
    state = lineage.check_dataset(project)
    assert (state.clean, state.md5) == (False, None)
    assert state.problems == ["data/tiny_coco: dvc.lock records no hash for it"]


def local_remote(root: Path, name: str = "stack") -> dict:
    """Remote `name` as .dvc/config.local holds it, read by DVC."""
    with Repo(str(root)) as repo:
        return dict(repo.config.read("local")["remote"][name])


@pytest.fixture
def s3():
    """A real S3 server (moto's, in a thread) with one bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = {"endpoint_url": f"http://{host}:{port}", "access_key": "test-key", "secret_key": "test-secret"}
        boto3.client(
            "s3",
            endpoint_url=endpoint["endpoint_url"],
            aws_access_key_id="test-key",
            aws_secret_access_key="test-secret",
            region_name="us-east-1",
        ).create_bucket(Bucket="stack")
        yield endpoint
    finally:
        server.stop()


def test_push_delete_pull_round_trip_byte_for_byte(project, s3, tmp_path, monkeypatch):
    """The keys stay in a 0600 credentials file under the stack's folder; the
    checkout's DVC config only points at it, and push/pull still work."""
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # what DVC sets from the remote is undone after the test
    keys = tmp_path / "stack" / "local" / "aws-credentials"
    write_aws_credentials(keys, s3["access_key"], s3["secret_key"])
    lineage.configure_remote(project, url="s3://stack/dvc", endpoint_url=s3["endpoint_url"], credential_path=keys)
    for config in (project / ".dvc/config", project / ".dvc/config.local"):
        assert "test-secret" not in config.read_text() and "test-key" not in config.read_text()
    assert local_remote(project) == {
        "url": "s3://stack/dvc",
        "endpointurl": s3["endpoint_url"],
        "credentialpath": str(keys),
        "region": "us-east-1",
        "connect_timeout": "5",
        "read_timeout": "60",
    }
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert git(project, "status", "--porcelain") == ""  # config.local is ignored, nothing else changed
    assert lineage.remote_url(project) == "s3://stack/dvc"

    before = tree(project / "data")
    # the DVC outputs' files (every file of data/ but its .gitignore and the cut in git),
    # plus the .dir listing of data/tiny_coco
    pushed = len([name for name in before if not name.startswith("coco_persons/")])
    assert lineage.push(project) == pushed
    # moto ignores keys; what DVC handed botocore is checked instead: the file, and its keys
    assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(keys)
    found = boto3.Session().get_credentials()
    assert (found.access_key, found.secret_key) == ("test-key", "test-secret")
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint_url"],
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
        region_name="us-east-1",
    )
    stored = client.list_objects_v2(Bucket="stack", Prefix="dvc/")["KeyCount"]
    assert stored == pushed

    shutil.rmtree(project / "data/tiny_coco")
    (project / "data/tiny_coco.yaml").unlink()
    shutil.rmtree(project / ".dvc/cache")
    assert not lineage.check_dataset(project).clean
    lineage.pull(project)
    assert tree(project / "data") == before
    assert lineage.check_dataset(project).clean


def test_dataset_input_is_on_the_run(project, tmp_path):
    md5 = lineage.check_dataset(project).md5
    commit = lineage.lock_commit(project)
    dataset = lineage.dataset_input(project, md5, "s3://stack/dvc", commit)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_input(dataset, context="training")
    finally:
        mlflow.set_tracking_uri(previous)
    inputs = MlflowClient(tracking_uri=uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    logged = inputs[0].dataset
    assert (logged.name, logged.digest, logged.source_type) == ("tiny_coco", md5, "dvc")
    assert json.loads(logged.source) == {"url": "s3://stack/dvc", "rev": commit, "path": "data/tiny_coco", "repo": None}
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
    assert mlflow.data.get_source(inputs[0]).rev == commit
