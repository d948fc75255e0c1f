"""The registered model: best.pt behind MLflow's pyfunc interface, so that
`mlflow.pyfunc.load_model("models:/<name>@staging").predict(...)` returns boxes
for what people pass: an image path, a numpy RGB array, a PIL image (or a list
of any of these), or the DataFrame of base64 strings that `mlflow models serve`
receives as JSON.

Only this module travels with a logged model, so it imports nothing else of the
package."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

COLUMNS = ["image", "class", "confidence", "x1", "y1", "x2", "y2"]
ACCEPTED = (
    "an image path, a numpy HxWx3 uint8 RGB array, a PIL image, a list of those, "
    "or a DataFrame with a column 'image' of base64-encoded image files"
)


def encode_images(paths: list[Path]) -> pd.DataFrame:
    """The REST form of the input: one row per image, its file bytes base64-encoded."""
    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]})


def signature(imgsz: int) -> ModelSignature:
    # No input schema: MLflow enforces one before predict is called and would turn
    # away paths, arrays and PIL images; predict checks its input itself. The
    # params schema stays, so MLflow still checks conf and imgsz and fills defaults.
    return ModelSignature(
        inputs=None,
        outputs=Schema(
            [
                ColSpec("long", "image"),
                ColSpec("long", "class"),
                ColSpec("double", "confidence"),
                ColSpec("double", "x1"),
                ColSpec("double", "y1"),
                ColSpec("double", "x2"),
                ColSpec("double", "y2"),
            ]
        ),
        params=ParamSchema([ParamSpec("conf", "double", 0.25), ParamSpec("imgsz", "long", imgsz)]),
    )


def _bad_input(what: str) -> MlflowException:
    # invalid_parameter_value: `mlflow models serve` answers it with 400, not 500.
    return MlflowException.invalid_parameter_value(f"model input: {what}; expected {ACCEPTED}")


def _one_image(item, index: int):
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as image:
            return image.convert("RGB")
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise _bad_input(f"image {index} is an array of shape {item.shape} and dtype {item.dtype}")
        return Image.fromarray(item, "RGB")
    raise _bad_input(f"image {index} is a {type(item).__name__}")


def to_images(model_input) -> list:
    """Every accepted form as RGB PIL images. All of them go through PIL, so the
    same picture gives the same boxes whatever form it came in (ultralytics would
    read a path with OpenCV and take a bare array for BGR)."""
    from PIL import Image

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise _bad_input(f"the DataFrame has columns {list(model_input.columns)}, no 'image'")
        images = []
        for index, encoded in enumerate(model_input["image"]):
            try:
                with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
                    images.append(image.convert("RGB"))
            except (ValueError, TypeError, OSError):  # not base64, or not an image file
                raise _bad_input(f"row {index} of column 'image' is not a base64-encoded image file") from None
        return images
    if isinstance(model_input, (list, tuple)):
        return [_one_image(item, index) for index, item in enumerate(model_input)]
    return [_one_image(model_input, 0)]


def boxes_frame(rows: list[list]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype(
        {
            "image": "int64",
            "class": "int64",
            "confidence": "float64",
            "x1": "float64",
            "y1": "float64",
            "x2": "float64",
            "y2": "float64",
        }
    )


class YoloDetector(mlflow.pyfunc.PythonModel):
    """Boxes in pixel coordinates of the input image, one row per detection;
    `image` is the index of the input image the box was found in."""

    def load_context(self, context) -> None:
        import torch
        from ultralytics import YOLO

        # ultralytics loads a checkpoint onto the CPU (map_location="cpu") whatever device
        # saved it, so weights trained on a GPU load on a CPU-only machine; they run where
        # the model is used, not where it was trained.
        self.model = YOLO(context.artifacts["weights"])
        self.device = "cuda:0" if torch.cuda.is_available() else "cpu"

    # The hint is pandas' because MLflow infers and enforces nothing from it (a
    # Union of the accepted forms draws a warning); to_images checks the input.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        conf, imgsz = float(params.get("conf", 0.25)), int(params.get("imgsz", 320))
        rows = []
        # One image per call: a batch of differently sized images is letterboxed to
        # a common shape, which would change the boxes with the company an image keeps.
        for index, image in enumerate(to_images(model_input)):
            result = self.model.predict(image, conf=conf, imgsz=imgsz, device=self.device, verbose=False)[0]
            boxes = result.boxes
            for cls, score, xyxy in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True):
                rows.append([index, int(cls), float(score), *map(float, xyxy)])
        return boxes_frame(rows)
