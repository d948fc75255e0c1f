"""The tiny COCO person dataset: read a source (COCO128, the COCO person cut shipped in
data/coco_persons, a local YOLO-format folder or zip, or the synthetic set), validate every label and image, keep the person boxes,
split, resize and write it so that the same inputs give the same bytes.

Layout written: `<out>/{images,labels}/{train,val,test}/`, `<out>/source.json` (what it
was built from, so the source is part of the DVC hash of `<out>`), and a dataset yaml
whose paths are relative to the yaml's folder (no `path:` key: ultralytics would
resolve a relative one against its own datasets folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from mlflow_cv_yolo.data import synthetic
from mlflow_cv_yolo.data.yolo_format import IMAGE_SUFFIXES, PERSON, DatasetError, Sample, read_yolo

COCO128_URL = "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip"
SHIPPED = "coco_persons"  # the real COCO person cut beside the dataset folder (data/coco_persons)
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
DOWNLOAD_TIMEOUT_S = 10


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    yaml_path: Path
    source: str  # "coco128", "coco_persons", "synthetic" or the absolute path of a local source
    kind: str  # "coco128", "coco_persons", "synthetic" or "path", as recorded in the yaml's `source:`
    ref: str  # what identifies the input: URL or folder name with a sha256, or generator and seed
    counts: tuple[int, int, int]  # train, val, test images
    boxes: int  # person boxes written, all splits


@dataclass(frozen=True)
class _Source:
    source: str
    kind: str
    ref: str
    samples: list[Sample]


def build_dataset(source: str, out_dir: Path, yaml_path: Path, *, counts: tuple[int, int, int] = (40, 10, 10),
                  imgsz: int = 320, seed: int = 0, cache_dir: Path | None = None, style: str = "standard",
                  shipped: Path | None = None, log: Callable[[str], None] = print) -> BuildResult:
    """Build the dataset from `source` ("auto", "coco128", "coco_persons", "synthetic" or a
    path) into `out_dir` and `yaml_path`, replacing them only once the build has succeeded.
    `shipped` is the real COCO person cut (default: `coco_persons` beside `out_dir`); `auto`
    takes COCO128, else that cut, else the synthetic set."""
    out_dir, yaml_path = Path(out_dir), Path(yaml_path)
    counts = _check_request(counts, imgsz)
    shipped = Path(shipped) if shipped is not None else out_dir.parent / SHIPPED
    if style not in synthetic.STYLES:
        raise DatasetError(f"style={style!r}: one of {', '.join(synthetic.STYLES)}")
    if style != "standard" and source != "synthetic":
        raise DatasetError(f"style={style!r}: applies to the synthetic source only, not to {source!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir.parent / ".cache"
    with contextlib.ExitStack() as scratch:
        src = _resolve(source, sum(counts), imgsz=imgsz, seed=seed, style=style, cache_dir=cache_dir,
                       shipped=shipped, log=log, scratch=scratch)
        if len(src.samples) < sum(counts):
            raise DatasetError(f"need {sum(counts)} person images ({counts[0]} train + {counts[1]} val + "
                               f"{counts[2]} test), source has {len(src.samples)} ({src.source})")
        order = sorted(src.samples, key=lambda s: s.name)
        random.Random(seed).shuffle(order)
        bounds = [0, counts[0], counts[0] + counts[1], sum(counts)]
        splits = {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(SPLITS)}
        boxes = _write(splits, src, out_dir, yaml_path, imgsz=imgsz, seed=seed)
    log(f"dataset: wrote {sum(counts)} images ({counts[0]}/{counts[1]}/{counts[2]}), {boxes} person boxes, "
        f"{imgsz}px, from {src.kind} ({src.ref}) to {out_dir} and {yaml_path}")
    return BuildResult(out_dir, yaml_path, src.source, src.kind, src.ref, counts, boxes)


def _check_request(counts: tuple[int, int, int], imgsz: int) -> tuple[int, int, int]:
    if len(counts) != 3 or any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
        raise DatasetError(f"counts={counts!r}: must be three integers (train, val, test)")
    if counts[0] < 1 or counts[1] < 1 or counts[2] < 0:
        raise DatasetError(f"counts={counts!r}: train and val need at least 1 image, test at least 0")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise DatasetError(f"imgsz={imgsz!r}: must be an integer >= 32")
    return tuple(counts)


# --- sources -----------------------------------------------------------------------

def _resolve(source: str, need: int, *, imgsz: int, seed: int, style: str, cache_dir: Path, shipped: Path,
             log: Callable[[str], None], scratch: contextlib.ExitStack) -> _Source:
    if source == "synthetic":
        return _synthetic(need, imgsz=imgsz, seed=seed, style=style)
    if source == "coco128":
        return _coco128(_coco128_zip(cache_dir, log), scratch, log)
    if source == SHIPPED:
        if not (shipped / "images").is_dir():
            raise DatasetError(f"{SHIPPED}: the shipped COCO person cut is not at {shipped} (no images/ folder)")
        return _shipped(shipped, log)
    if source == "auto":
        zip_path = cache_dir / "coco128.zip"
        if zipfile.is_zipfile(zip_path):
            log(f"dataset: source auto -> coco128 (cached at {zip_path})")
            return _coco128(zip_path, scratch, log)
        try:
            zip_path = _download(COCO128_URL, zip_path, log)
        except DatasetError as exc:
            return _offline(need, imgsz=imgsz, seed=seed, shipped=shipped, log=log,
                            why=f"COCO128 is not cached at {zip_path} and cannot be downloaded: {exc}")
        log(f"dataset: source auto -> coco128 (downloaded to {zip_path})")
        return _coco128(zip_path, scratch, log)
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"{source}: no such file or folder (a source is auto, coco128, synthetic or a "
                           f"path to a YOLO-format folder or zip)")
    root = _unpack(path, scratch) if path.is_file() else path
    samples = read_yolo(_find_root(root, path), shown=_shown(root, path),
                        missing_labels="background" if _is_coco128_layout(root) else "error", log=log)
    return _Source(str(path.resolve()), "path", f"{path.resolve().name} (sha256 {_digest(path)})", samples)


def _offline(need: int, *, imgsz: int, seed: int, shipped: Path, log: Callable[[str], None], why: str) -> _Source:
    """Real images where the shipped cut is there and large enough; synthetic ones otherwise."""
    if (shipped / "images").is_dir():
        src = _shipped(shipped, log)
        if len(src.samples) >= need:
            log(f"dataset: source auto -> {SHIPPED}, real COCO images shipped at {shipped} ({why})")
            return src
        why += f"; the shipped cut at {shipped} has {len(src.samples)} person images, {need} are needed"
    else:
        why += f"; no shipped COCO person cut at {shipped}"
    log(f"dataset: source auto -> SYNTHETIC images, not photographs ({why})")
    return _synthetic(need, imgsz=imgsz, seed=seed)


def _shipped(folder: Path, log: Callable[[str], None]) -> _Source:
    samples = read_yolo(folder, shown=lambda p: str(p), missing_labels="error", log=log)
    return _Source(SHIPPED, SHIPPED, f"{SHIPPED} (sha256 {_digest(folder)})", samples)


def _synthetic(count: int, *, imgsz: int, seed: int, style: str = "standard") -> _Source:
    samples = [Sample(s.name, s.boxes, lambda image=s.image: image)
               for s in synthetic.draw_set(count, seed=seed, size=imgsz, style=style)]
    return _Source("synthetic", "synthetic", f"{synthetic.generator(style)} seed {seed}", samples)


def _coco128(zip_path: Path, scratch: contextlib.ExitStack, log: Callable[[str], None]) -> _Source:
    root = _unpack(zip_path, scratch)
    # COCO128 ships two images with no label file (backgrounds): not an error there.
    samples = read_yolo(_find_root(root, zip_path), shown=_shown(root, zip_path), missing_labels="background",
                        log=log)
    return _Source("coco128", "coco128", f"{COCO128_URL} (sha256 {_digest(zip_path)})", samples)


def _coco128_zip(cache_dir: Path, log: Callable[[str], None]) -> Path:
    zip_path = cache_dir / "coco128.zip"
    if zipfile.is_zipfile(zip_path):
        log(f"dataset: source coco128 (cached at {zip_path})")
        return zip_path
    try:
        _download(COCO128_URL, zip_path, log)
    except DatasetError as exc:
        raise DatasetError(f"coco128: not cached at {zip_path} and cannot be downloaded: {exc} "
                           f"(offline: use --source synthetic, or a local copy with --source PATH)") from None
    log(f"dataset: source coco128 (downloaded to {zip_path})")
    return zip_path


def _download(url: str, target: Path, log: Callable[[str], None]) -> Path:
    """Download to a temporary name, then rename: an interrupted download leaves no zip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        log(f"dataset: downloading {url}")
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        if not zipfile.is_zipfile(part):
            raise DatasetError(f"{url}: the download is not a zip file")
        os.replace(part, target)
    except OSError as exc:  # URLError, timeouts and refused connections are OSErrors
        raise DatasetError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def _unpack(zip_path: Path, scratch: contextlib.ExitStack) -> Path:
    if not zipfile.is_zipfile(zip_path):
        raise DatasetError(f"{zip_path}: not a folder or a zip file")
    folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="dataset-source-")))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(folder)  # extractall drops absolute and `..` member paths
    return folder


def _find_root(folder: Path, shown: Path) -> Path:
    """`folder` itself or its one subfolder (a zip's top folder) that has images/."""
    if (folder / "images").is_dir():
        return folder
    inside = [d for d in sorted(folder.iterdir()) if (d / "images").is_dir()]
    if len(inside) == 1:
        return inside[0]
    raise DatasetError(f"{shown}: not a YOLO-format dataset: no images/ folder (expected images/<split>/*.jpg "
                       f"with labels/<split>/*.txt beside it)")


def _shown(unpacked: Path, given: Path) -> Callable[[Path], str]:
    """How to name a file of the source in messages: under the path the user gave."""
    return lambda path: str(given / path.relative_to(unpacked)) if path.is_relative_to(unpacked) else str(path)


def _is_coco128_layout(folder: Path) -> bool:
    return any((d / "images" / "train2017").is_dir() for d in [folder, *folder.iterdir()] if d.is_dir())


def _digest(path: Path) -> str:
    """sha256 of a zip, or of a folder's images and label files (relative names and bytes)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    else:
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | {".txt"} and p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


# --- writing -------------------------------------------------------------------------

def _write(splits: dict[str, list[Sample]], src: _Source, out_dir: Path, yaml_path: Path, *,
           imgsz: int, seed: int) -> int:
    """Write into a temporary folder beside `out_dir`, then swap it in by renames."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    building = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    yaml_part = yaml_path.with_name(f".{yaml_path.name}.part-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        boxes = {split: _write_split(samples, building, split, imgsz) for split, samples in splits.items()}
        record = {"source": src.kind, "source_ref": src.ref, "imgsz": imgsz, "seed": seed,
                  "images": {split: len(samples) for split, samples in splits.items()}, "boxes": boxes}
        (building / "source.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        yaml_part.write_text(_yaml_text(out_dir, yaml_path, src, splits))
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(building, out_dir)
        os.replace(yaml_part, yaml_path)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        yaml_part.unlink(missing_ok=True)
    return sum(boxes.values())


def _write_split(samples: list[Sample], root: Path, split: str, imgsz: int) -> int:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for sample in samples:
        with sample.load() as im:
            # A plain resize keeps normalised box coordinates exact.
            rgb = im.convert("RGB")
            if rgb.size != (imgsz, imgsz):
                rgb = rgb.resize((imgsz, imgsz), Image.Resampling.BILINEAR)
            rgb.save(images / f"{sample.name}.jpg", "JPEG", quality=JPEG_QUALITY)
        lines = [f"{PERSON} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cx, cy, w, h in sample.boxes]
        (labels / f"{sample.name}.txt").write_text("".join(lines))
    return sum(len(s.boxes) for s in samples)


def _yaml_text(out_dir: Path, yaml_path: Path, src: _Source, splits: dict[str, list[Sample]]) -> str:
    rel = Path(os.path.relpath(out_dir.resolve(), yaml_path.parent.resolve())).as_posix()
    lines = ["# Written by `python -m mlflow_cv_yolo dataset build`; paths are relative to this file.\n"]
    lines += [f"{split}: {rel}/images/{split}\n" for split in SPLITS if splits[split]]
    lines += ["names:\n", f"  {PERSON}: person\n", f"source: {src.kind}\n", f"source_ref: {json.dumps(src.ref)}\n"]
    return "".join(lines)
