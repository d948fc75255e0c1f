"""The registered model: best.pt behind MLflow's pyfunc interface, so that
`mlflow.pyfunc.load_model("models:/<name>@staging")` predicts boxes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

COLUMNS = ["image", "class", "confidence", "x1", "y1", "x2", "y2"]


def encode_images(paths: list[Path]) -> pd.DataFrame:
    """The model's input: one row per image, its file bytes base64-encoded."""
    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]})


def signature(imgsz: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("long", "image"), ColSpec("long", "class"), ColSpec("double", "confidence"),
                        ColSpec("double", "x1"), ColSpec("double", "y1"), ColSpec("double", "x2"),
                        ColSpec("double", "y2")]),
        params=ParamSchema([ParamSpec("conf", "double", 0.25), ParamSpec("imgsz", "long", imgsz)]),
    )


class YoloDetector(mlflow.pyfunc.PythonModel):
    """Boxes in pixel coordinates of the input image, one row per detection."""

    def load_context(self, context) -> None:
        from ultralytics import YOLO

        self.model = YOLO(context.artifacts["weights"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from PIL import Image

        params = params or {}
        rows = []
        for index, encoded in enumerate(model_input["image"]):
            image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
            result = self.model.predict(image, conf=float(params.get("conf", 0.25)),
                                        imgsz=int(params.get("imgsz", 320)), device="cpu", verbose=False)[0]
            boxes = result.boxes
            for cls, conf, xyxy in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist()):
                rows.append([index, int(cls), float(conf), *map(float, xyxy)])
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return frame.astype({"image": "int64", "class": "int64"})
