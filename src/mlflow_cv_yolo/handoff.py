"""What the session's controller hands every worker, decided once: where to track,
which session and parent run, which weights and data, which devices. Travels as a plain dict
(xdist's `workerinput`, a Ray task's argument)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mlflow_cv_yolo.stack.base import CLIENT_RETRY_ENV

# MLflow's client settings in every process of a session: downloads through the server (a
# presigned URL may name an endpoint only it reaches), no URL lines or progress bars in
# pytest's output, and retries that bridge a restarted service.
CLIENT_ENV = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    **CLIENT_RETRY_ENV,
}


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    stack_kind: str
    data: str
    model_requested: str
    model_used: str
    pretrained: bool
    model_note: str
    workdir: str
    parent_run_id: str
    git_commit: str | None = None
    dataset_md5: str | None = None
    dataset_dirty: bool = False
    dataset_source: str | None = None  # where `dvc pull` fetches it (the DVC remote URL)
    dataset_lock_commit: str | None = None
    dataset: dict | None = None  # the DVC dataset every run logs as its input (runs/training_run.py dataset_fields)
    # The selected devices' labels (devices.select); worker k trains on devices[k % len].
    devices: tuple[str, ...] = ("cpu",)
    amp_check: str | None = None  # training.amp_check's verdict, once per session; None: not checked
    data_digest: str | None = None  # the data's part of every run's key (see runs/key.py), computed once
    client_env: dict[str, str] = field(default_factory=lambda: dict(CLIENT_ENV))
    # Where runs train (executors.make_executor): {"kind": "local"}, or Ray's address,
    # resources per run and where nodes find the data.
    executor: dict = field(default_factory=lambda: {"kind": "local"})
    # Configurations with a FINISHED run to reuse, found at the start (reuse.plan):
    # config id -> [run id, run key, the session that trained it].
    reusable: dict = field(default_factory=dict)
    # Configurations whose run --prune stopped, which this session (not pruning) continues.
    continued: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> SessionInfo:
        return cls(
            **{**raw, "devices": tuple(raw.get("devices", ("cpu",))), "continued": tuple(raw.get("continued", ()))}
        )
