"""A YOLOv8 experiment grid run as pytest tests, tracked in MLflow."""

import os

# Offline, MLflow's telemetry thread edits os.environ while a tracking call reads it (KeyError);
# MLflow reads this at import, so it is set before any module imports MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
