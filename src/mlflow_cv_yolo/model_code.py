"""The logged model's code, for MLflow's "models from code": loading the model runs
this file (no pickled Python object inside the model)."""

from mlflow.models import set_model

from mlflow_cv_yolo.detector import YoloDetector

set_model(YoloDetector())
