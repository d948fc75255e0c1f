"""A YOLOv8 experiment grid run as pytest tests, tracked in MLflow."""

import os

# MLflow's telemetry (on by default since 3.x) fetches its config from the internet in a
# thread; when that fails the thread pops _MLFLOW_TELEMETRY_SESSION_ID from os.environ
# while `requests` iterates os.environ in another thread, and a tracking call fails with
# KeyError('_MLFLOW_TELEMETRY_SESSION_ID') (seen creating the session run, offline). It
# is read when MLflow is imported, so it is set here, before any module imports MLflow;
# an explicit MLFLOW_DISABLE_TELEMETRY=false still wins. Child processes inherit it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
