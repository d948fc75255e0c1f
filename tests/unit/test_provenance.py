"""The words a session's header gives its data, from the builder's source.json."""

from __future__ import annotations

import json

from mlflow_cv_yolo.data.provenance import SourceWords, describe, source_words

IMAGES = {"train": 40, "val": 10, "test": 10}


def test_each_source_has_its_words_and_only_synthetic_is_loud():
    records = {
        "coco_persons": "coco_persons (sha256 2fe1a4ad0f26b1dd)",
        "coco128": "https://example.invalid/coco128.zip (sha256 0123)",
        "synthetic": "mlflow_cv_yolo.synthetic/1 seed 0",
        "path": "my_set (sha256 89ab)",
    }
    words = {kind: describe({"source": kind, "source_ref": ref, "images": IMAGES}) for kind, ref in records.items()}
    assert words == {
        "coco_persons": SourceWords("COCO person cut, 60 real images (shipped)", False),
        "coco128": SourceWords("COCO128 person images, 60 real images", False),
        "synthetic": SourceWords(
            "SYNTHETIC images, 60 drawn by mlflow_cv_yolo.synthetic/1 seed 0 — not photographs", True
        ),
        "path": SourceWords("local dataset my_set, 60 images", False),
    }


def test_a_yaml_the_builder_wrote_is_read_back_and_another_is_none(tmp_path):
    (tmp_path / "set" / "images" / "train").mkdir(parents=True)
    (tmp_path / "set" / "source.json").write_text(json.dumps({"source": "coco_persons", "images": IMAGES}))
    built = tmp_path / "built.yaml"
    built.write_text("train: set/images/train\nval: set/images/val\nnames:\n  0: person\n")
    assert source_words(built) == SourceWords("COCO person cut, 60 real images (shipped)", False)
    own = tmp_path / "own.yaml"
    own.write_text("path: elsewhere\ntrain: images/train\nval: images/val\nnames:\n  0: person\n")
    assert source_words(own) is None
    assert source_words(tmp_path / "absent.yaml") is None
