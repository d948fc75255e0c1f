"""Reading a YOLO-format folder (`images/**` with `labels/**/*.txt` beside it) with
every image decoded and every label line checked, keeping the person boxes.

Errors are one line naming the file, and the line for a label: `file:line: what`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image
from mlflow_cv_yolo.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PERSON = 0

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    name: str
    boxes: list[Box]
    load: Callable[[], Image.Image]


def read_yolo(root: Path, *, shown: Callable[[Path], str], missing_labels: str,
              log: Callable[[str], None]) -> list[Sample]:
    """The images under `root` that hold at least one person box. `shown` names a file
    in messages; `missing_labels` is "error", or "background" where an image without a
    label file is legal (COCO128)."""
    images = sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"{shown(root / 'images')}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    rels = [p.relative_to(root / "images").with_suffix("") for p in images]
    unique = len({r.name for r in rels}) == len(rels)
    samples, backgrounds = [], 0
    for image, rel in zip(images, rels):
        _check_image(image, shown)
        label = root / "labels" / rel.with_suffix(".txt")
        if not label.is_file():
            if missing_labels == "error":
                raise DatasetError(f"{shown(image)}: no label file {shown(label)} (an image with no objects "
                                   f"needs an empty one)")
            backgrounds += 1
            continue
        boxes = _read_label(label, shown)
        if boxes:
            samples.append(Sample(rel.name if unique else "_".join(rel.parts), boxes,
                                  lambda image=image: Image.open(image)))
    if backgrounds:
        log(f"dataset: {backgrounds} images without a label file taken as backgrounds (COCO128 layout)")
    return samples


def _check_image(path: Path, shown: Callable[[Path], str]) -> None:
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError or DecompressionBombError
        raise DatasetError(f"{shown(path)}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _read_label(path: Path, shown: Callable[[Path], str]) -> list[Box]:
    """All lines checked; only the person boxes returned."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{shown(path)}: cannot read label file ({exc})") from None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            cls, box = _parse_line(line, f"{shown(path)}:{number}")
            if cls == PERSON:
                boxes.append(box)
    return boxes


def _parse_line(line: str, where: str) -> tuple[int, Box]:
    fields = line.split()
    if len(fields) != 5:
        raise DatasetError(f"{where}: expected 5 fields (class x_center y_center width height), got "
                           f"{len(fields)}: {line.strip()!r}")
    values = []
    for name, field in zip(("class", "x_center", "y_center", "width", "height"), fields):
        try:
            value = float(field)
        except ValueError:
            raise DatasetError(f"{where}: {name} {field!r} is not a number") from None
        if not math.isfinite(value):
            raise DatasetError(f"{where}: {name} {field!r} is not a finite number")
        values.append(value)
    if not values[0].is_integer() or values[0] < 0:
        raise DatasetError(f"{where}: class {fields[0]!r} is not a non-negative integer")
    for name, field, value in zip(("x_center", "y_center", "width", "height"), fields[1:], values[1:]):
        if not 0 <= value <= 1:
            raise DatasetError(f"{where}: {name} {field} is outside [0, 1] (coordinates are normalised)")
    for name, field, value in zip(("width", "height"), fields[3:], values[3:]):
        if value <= 0:
            raise DatasetError(f"{where}: {name} {field} must be positive")
    return int(values[0]), tuple(values[1:])


def label_path(image: Path) -> Path:
    """Where ultralytics looks for an image's labels: the last `images` folder of its
    path replaced by `labels`, suffix `.txt`."""
    parts = list(image.parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:index], "labels", *parts[index + 1:]).with_suffix(".txt")


def check_split(images_dir: Path, *, classes: int, shown: Callable[[Path], str] = str) -> tuple[int, int]:
    """Decode every image of one split and check every line of its labels, as ultralytics
    would read them, with class ids below `classes`. Returns (images, boxes). An image
    without a label file is a background image, as in ultralytics."""
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"{shown(images_dir)}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if "images" not in images_dir.resolve().parts:
        raise DatasetError(f"{shown(images_dir)}: not under an `images` folder, so ultralytics finds no labels "
                           f"for it (expected .../images/<split> with .../labels/<split> beside it)")
    boxes = 0
    for image in images:
        _check_image(image, shown)
        label = label_path(image.resolve())
        if not label.is_file():
            continue
        try:
            text = label.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{shown(label)}: cannot read label file ({exc})") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            cls, _ = _parse_line(line, f"{shown(label)}:{number}")
            if cls >= classes:
                raise DatasetError(f"{shown(label)}:{number}: class {cls} is not one of the dataset's {classes} "
                                   f"names (0..{classes - 1})")
            boxes += 1
    return len(images), boxes
