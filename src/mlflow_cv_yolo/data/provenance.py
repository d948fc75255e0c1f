"""What a built dataset was made from, in words for a person: the source.json the
builder writes beside the splits, read back from a dataset yaml."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceWords:
    text: str  # e.g. "COCO person cut, 60 real images (shipped)"
    loud: bool  # synthetic images, not photographs: shown like training from scratch


def source_record(data_yaml: Path) -> dict | None:
    """The builder's source.json for the dataset `data_yaml` names; None for a yaml the
    builder did not write (or one whose record is unreadable)."""
    import yaml

    data_yaml = Path(data_yaml)
    try:
        spec = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    train = spec.get("train") if isinstance(spec, dict) else None
    if not isinstance(train, str):
        return None
    root = (data_yaml.parent / str(spec.get("path") or ".") / train).resolve().parents[1]
    try:
        record = json.loads((root / "source.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(record: dict) -> SourceWords:
    """The words for one source.json record."""
    images = record.get("images") or {}
    count = sum(v for v in images.values() if isinstance(v, int))
    kind, ref = record.get("source"), str(record.get("source_ref", ""))
    if kind == "coco_persons":
        return SourceWords(f"COCO person cut, {count} real images (shipped)", False)
    if kind == "coco128":
        return SourceWords(f"COCO128 person images, {count} real images", False)
    if kind == "synthetic":
        return SourceWords(f"SYNTHETIC images, {count} drawn by {ref} — not photographs", True)
    name = ref.split(" (sha256")[0] or "a local folder"
    return SourceWords(f"local dataset {name}, {count} images", False)


def source_words(data_yaml: Path) -> SourceWords | None:
    """How to name the data of a session in its header; None where the yaml was not
    written by the dataset builder (a user's own dataset: its path says enough)."""
    record = source_record(data_yaml)
    return describe(record) if record is not None else None
