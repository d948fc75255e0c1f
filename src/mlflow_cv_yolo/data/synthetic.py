"""Synthetic person-like figures on varied backgrounds, with exact YOLO boxes: the
dataset source of a machine that cannot download COCO128.

Everything is drawn from `numpy.random.default_rng([seed, index])`, so image `index`
of a seed is the same whatever the number of images asked for, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

# Part of the recorded source: change it whenever a change here changes the pixels.
GENERATOR = "mlflow_cv_yolo.synthetic/1"

Box = tuple[float, float, float, float]  # normalised cx, cy, w, h
BACKGROUNDS = ("noise", "gradient", "flat")


@dataclass(frozen=True)
class Style:
    """The generator's difficulty knobs; ranges are [low, high) for counts, [low, high)
    fractions of the image side for the figures' height and line thickness."""

    backgrounds: tuple[str, ...] = BACKGROUNDS
    distractors: tuple[int, int] = (0, 5)
    figures: tuple[int, int] = (1, 4)
    height: tuple[float, float] = (0.25, 0.85)
    thickness: tuple[float, float] = (0.03, 0.07)  # of the figure's height
    solid_only: bool = False
    min_contrast: int = 0  # least sum of |RGB difference| between a figure and the mean background


# `standard` is the offline fallback of the default dataset; `pretrain` is learnable
# enough for the project's checkpoint; `heldout` is the variation it is fine-tuned on.
STYLES = {
    "standard": Style(),
    "pretrain": Style(backgrounds=("noise", "gradient", "flat"), distractors=(0, 4), figures=(1, 4),
                      height=(0.3, 0.85), thickness=(0.04, 0.08), solid_only=True, min_contrast=150),
    "heldout": Style(backgrounds=("noise", "gradient"), distractors=(2, 7), figures=(1, 5),
                     height=(0.2, 0.6), thickness=(0.03, 0.06), min_contrast=90),
}


def generator(style: str = "standard") -> str:
    """The generator's name as recorded in a dataset's source, style included."""
    return GENERATOR if style == "standard" else f"{GENERATOR} style {style}"


def style_named(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"synthetic style {name!r}: one of {', '.join(STYLES)}")
    return STYLES[name]


@dataclass(frozen=True)
class SyntheticImage:
    name: str
    image: Image.Image
    boxes: list[Box]


def draw_set(count: int, *, seed: int, size: int, style: str = "standard") -> Iterator[SyntheticImage]:
    """`count` images of `size` x `size` pixels, each with the style's number of figures."""
    knobs = style_named(style)
    for index in range(count):
        yield draw_image(index, seed=seed, size=size, style=knobs)


def draw_image(index: int, *, seed: int, size: int, style: Style = STYLES["standard"]) -> SyntheticImage:
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size, style.backgrounds)
    draw = ImageDraw.Draw(image)
    _distractors(rng, draw, size, count=int(rng.integers(*style.distractors)))
    mean = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(axis=0)) if style.min_contrast else None
    boxes = [_figure(rng, draw, size, style, mean) for _ in range(int(rng.integers(*style.figures)))]
    return SyntheticImage(f"synthetic_{seed}_{index:05d}", image, boxes)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _contrasting(rng: np.random.Generator, against: tuple[int, int, int] | None, least: int) -> tuple[int, int, int]:
    colour = _colour(rng)
    while against is not None and sum(abs(a - b) for a, b in zip(colour, against)) < least:
        colour = _colour(rng)
    return colour


def _background(rng: np.random.Generator, size: int, kinds: tuple[str, ...]) -> Image.Image:
    kind = BACKGROUNDS.index(kinds[int(rng.integers(0, len(kinds)))])
    if kind == 0:  # smooth noise: coarse random grid, scaled up
        cells = int(rng.integers(4, 17))
        grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        return Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    if kind == 1:  # linear gradient between two colours at a random angle
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (x * math.cos(angle) + y * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        pixels = a + (b - a) * t[..., None]
        pixels += rng.normal(0, 6, size=pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Image.new("RGB", (size, size), _colour(rng))  # flat; distractors do the rest


def _distractors(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, *, count: int) -> None:
    """Rectangles, ellipses and triangles that are not people."""
    for _ in range(count):
        x0, y0 = (int(v) for v in rng.integers(0, size, size=2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2, size=2))
        kind, colour = int(rng.integers(0, 3)), _colour(rng)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.polygon([(x0, y0 + h), (x0 + w, y0 + h), (x0 + w // 2, y0)], fill=colour)


def _figure(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, style: Style,
            background: tuple[int, int, int] | None) -> Box:
    """Draw one stick or solid figure of random height, pose and colour, entirely inside
    the image; return its exact bounding box."""
    height = rng.uniform(*style.height) * size
    thick = max(2.0, height * rng.uniform(*style.thickness))
    head = height * 0.08
    neck = (0.0, 2 * head)
    shoulder = (0.0, 2 * head + 0.06 * height)
    hip = (0.0, 2 * head + 0.34 * height)
    lines: list[tuple[tuple[float, float], tuple[float, float]]] = [(neck, hip)]
    for side in (-1, 1):  # arms: upper arm and forearm
        upper = side * rng.uniform(0.15, 2.6)
        elbow = _step(shoulder, 0.16 * height, upper)
        lines += [(shoulder, elbow), (elbow, _step(elbow, 0.15 * height, upper + side * rng.uniform(-0.8, 0.8)))]
    for side in (-1, 1):  # legs: thigh and shin
        thigh = side * rng.uniform(0.0, 0.6)
        knee = _step(hip, 0.26 * height, thigh)
        lines += [(hip, knee), (knee, _step(knee, 0.26 * height, thigh + rng.uniform(-0.5, 0.5)))]
    solid = bool(rng.integers(0, 2)) or style.solid_only
    torso = height * 0.09 if solid else 0.0  # half-width of a solid torso

    points = [p for line in lines for p in line]
    x0 = min(min(x for x, _ in points) - thick / 2, -head, -torso)
    x1 = max(max(x for x, _ in points) + thick / 2, head, torso)
    y0 = min(min(y for _, y in points) - thick / 2, 0.0)
    y1 = max(y for _, y in points) + thick / 2
    dx = rng.uniform(-x0, size - x1)  # place the whole figure inside the image
    dy = rng.uniform(-y0, size - y1)

    colour = _contrasting(rng, background, style.min_contrast)
    at = lambda p: (p[0] + dx, p[1] + dy)  # noqa: E731
    if solid:
        draw.rectangle([dx - torso, shoulder[1] + dy, dx + torso, hip[1] + dy], fill=colour)
    for a, b in lines:
        draw.line([at(a), at(b)], fill=colour, width=round(thick))
        for x, y in (at(a), at(b)):  # round joints, so the box is the drawn extent
            draw.ellipse([x - thick / 2, y - thick / 2, x + thick / 2, y + thick / 2], fill=colour)
    draw.ellipse([dx - head, dy, dx + head, dy + 2 * head], fill=colour)

    left, right = max(x0 + dx, 0.0), min(x1 + dx, float(size))
    top, bottom = max(y0 + dy, 0.0), min(y1 + dy, float(size))
    return ((left + right) / 2 / size, (top + bottom) / 2 / size, (right - left) / size, (bottom - top) / size)


def _step(start: tuple[float, float], length: float, angle: float) -> tuple[float, float]:
    """The point `length` from `start` at `angle` radians from straight down."""
    return (start[0] + length * math.sin(angle), start[1] + length * math.cos(angle))
