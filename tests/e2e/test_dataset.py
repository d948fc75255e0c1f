"""The dataset builder: real sources (the COCO person images in data/coco_persons, the synthetic set, small
YOLO folders and zips written here), real files, no mocks."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from mlflow_cv_yolo.cli import main
from mlflow_cv_yolo.data import synthetic
from mlflow_cv_yolo.data.build import DatasetError, build_dataset
from mlflow_cv_yolo.data.provenance import SourceWords, source_words

COCO_PERSONS = Path(__file__).resolve().parents[2] / "data" / "coco_persons"


def quiet(_: str) -> None:
    pass


def build(source, where: Path, **kwargs):
    kwargs.setdefault("log", quiet)
    return build_dataset(str(source), where / "tiny_coco", where / "tiny_coco.yaml", **kwargs)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_source(root: Path, *, count: int = 8, images: str = "images/train", labels: str = "labels/train") -> Path:
    """A small YOLO-format folder: synthetic images (64 px); image 0 also has a
    non-person box, image 1 has only a non-person box."""
    (root / images).mkdir(parents=True)
    (root / labels).mkdir(parents=True)
    for i, sample in enumerate(synthetic.draw_set(count, seed=7, size=64)):
        sample.image.save(root / images / f"img{i}.jpg", quality=95)
        lines = [f"0 {cx} {cy} {w} {h}" for cx, cy, w, h in sample.boxes]
        lines = {0: lines + ["2 0.5 0.5 0.1 0.1"], 1: ["3 0.5 0.5 0.2 0.2"]}.get(i, lines)
        (root / labels / f"img{i}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    return write_source(tmp_path / "source")


def test_builds_from_the_real_coco_person_set(tmp_path):
    result = build(COCO_PERSONS, tmp_path)
    assert result.counts == (40, 10, 10)
    assert result.boxes == 253  # every box of the source is a person box
    assert result.kind == "path" and result.source == str(COCO_PERSONS.resolve())
    for split, count in zip(("train", "val", "test"), result.counts, strict=True):
        assert len(list((result.out_dir / "images" / split).glob("*.jpg"))) == count
        assert len(list((result.out_dir / "labels" / split).glob("*.txt"))) == count
    meta = yaml.safe_load(result.yaml_path.read_text())
    assert "path" not in meta
    assert {k: meta[k] for k in ("train", "val", "test", "names", "source")} == {
        "train": "tiny_coco/images/train",
        "val": "tiny_coco/images/val",
        "test": "tiny_coco/images/test",
        "names": {0: "person"},
        "source": "path",
    }
    assert meta["source_ref"].startswith("coco_persons (sha256 ")
    assert (result.out_dir / "source.json").is_file()


def test_synthetic_set_opens_in_ultralytics(tmp_path):
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    result = build("synthetic", tmp_path, counts=(8, 2, 2), imgsz=128)
    data = check_det_dataset(str(result.yaml_path))
    assert data["names"] == {0: "person"} and data["nc"] == 1
    assert yaml.safe_load(result.yaml_path.read_text())["source"] == "synthetic"
    boxes = 0
    for split in ("train", "val", "test"):
        images = sorted(Path(data[split]).glob("*.jpg"))
        assert len(images) == {"train": 8, "val": 2, "test": 2}[split]
        for image in images:
            label = result.out_dir / "labels" / split / f"{image.stem}.txt"
            _, lb, shape, _, _, missing, found, empty, corrupt, msg = verify_image_label(
                (str(image), str(label), "", False, 1, 0, 0, False)
            )
            assert (missing, found, empty, corrupt) == (0, 1, 0, 0), msg
            assert shape == (128, 128) and (lb[:, 0] == 0).all()
            boxes += len(lb)
    assert boxes == result.boxes


@pytest.mark.parametrize("kind", ["synthetic", "folder"])
def test_same_inputs_give_the_same_bytes(tmp_path, source, kind):
    src = "synthetic" if kind == "synthetic" else source
    first = build(src, tmp_path / "a", counts=(4, 2, 1), seed=3)
    second = build(src, tmp_path / "b", counts=(4, 2, 1), seed=3)
    assert tree(first.out_dir) == tree(second.out_dir)
    assert first.yaml_path.read_bytes() == second.yaml_path.read_bytes()
    other_seed = build(src, tmp_path / "c", counts=(4, 2, 1), seed=4)
    assert tree(other_seed.out_dir) != tree(first.out_dir)


def test_keeps_person_images_and_person_boxes_only(tmp_path, source):
    result = build(source, tmp_path, counts=(4, 2, 1), imgsz=32)  # 7 of the 8 images have a person
    labels = [p.read_text() for p in sorted(result.out_dir.glob("labels/*/*.txt"))]
    assert len(labels) == 7
    assert all(line.startswith("0 ") for text in labels for line in text.splitlines())
    assert not (result.out_dir / "labels" / "train" / "img1.txt").exists()
    assert not any(result.out_dir.glob("*/*/img1.*"))
    assert result.boxes == sum(len(text.splitlines()) for text in labels)
    from PIL import Image

    with Image.open(next(result.out_dir.glob("images/train/*.jpg"))) as im:
        assert im.size == (32, 32)


def test_a_zip_gives_the_same_images_and_labels_as_its_folder(tmp_path, source):
    archive = tmp_path / "source.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(source.rglob("*")):
            z.write(path, Path("top") / path.relative_to(source))
    from_folder = build(source, tmp_path / "a", counts=(4, 2, 1))
    from_zip = build(archive, tmp_path / "b", counts=(4, 2, 1))
    strip = lambda t: {k: v for k, v in t.items() if k != "source.json"}  # noqa: E731
    assert strip(tree(from_folder.out_dir)) == strip(tree(from_zip.out_dir))


def test_coco128_layout_takes_unlabelled_images_as_backgrounds(tmp_path):
    """COCO128 ships images with no label file; its cached zip is used without network."""
    root = write_source(tmp_path / "coco128", images="images/train2017", labels="labels/train2017")
    (root / "labels/train2017/img7.txt").unlink()
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "coco128.zip", "w") as z:
        for path in sorted(root.rglob("*")):
            z.write(path, path.relative_to(root.parent))
    lines = []
    result = build("auto", tmp_path / "out", counts=(4, 1, 1), cache_dir=cache, log=lines.append)
    assert result.kind == result.source == "coco128"
    assert any("auto -> coco128 (cached" in line for line in lines)
    assert any("1 images without a label file taken as backgrounds" in line for line in lines)
    assert yaml.safe_load(result.yaml_path.read_text())["source"] == "coco128"


@pytest.fixture
def offline(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY"):  # a closed port: every download fails at once
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def test_offline_auto_takes_the_shipped_coco_person_cut(tmp_path, offline):
    lines = []
    result = build("auto", tmp_path, cache_dir=tmp_path / "cache", shipped=COCO_PERSONS, log=lines.append)
    assert (result.kind, result.counts, result.boxes) == ("coco_persons", (40, 10, 10), 253)
    assert [line.split(" (")[0] for line in lines if "source auto" in line] == [
        f"dataset: source auto -> coco_persons, real COCO images shipped at {COCO_PERSONS}"
    ]
    assert source_words(result.yaml_path) == SourceWords("COCO person cut, 60 real images (shipped)", False)
    same = build("coco_persons", tmp_path / "explicit", shipped=COCO_PERSONS)
    assert tree(same.out_dir) == tree(result.out_dir)


def test_offline_auto_is_synthetic_only_without_the_cut_and_explicit_coco128_fails(tmp_path, offline):
    lines = []
    result = build("auto", tmp_path / "auto", counts=(2, 1, 1), cache_dir=tmp_path / "cache", log=lines.append)
    assert result.source == "synthetic"
    assert any(
        line.startswith("dataset: source auto -> SYNTHETIC images, not photographs (COCO128 is not cached")
        and line.endswith(f"; no shipped COCO person cut at {tmp_path / 'auto' / 'coco_persons'})")
        for line in lines
    )
    words = source_words(result.yaml_path)
    assert words == SourceWords(f"SYNTHETIC images, 4 drawn by {synthetic.GENERATOR} seed 0 — not photographs", True)
    with pytest.raises(DatasetError, match=r"^coco128: not cached at .* cannot be downloaded"):
        build("coco128", tmp_path / "explicit", counts=(2, 1, 1), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "explicit").exists()


def test_offline_auto_with_a_cut_too_small_says_so_and_draws(tmp_path, offline):
    lines = []
    result = build(
        "auto",
        tmp_path,
        counts=(60, 10, 10),
        cache_dir=tmp_path / "cache",
        shipped=COCO_PERSONS,
        log=lines.append,
        imgsz=64,
    )
    assert result.kind == "synthetic"
    assert any(
        line.endswith(f"the shipped cut at {COCO_PERSONS} has 60 person images, 80 are needed)") for line in lines
    )


def test_a_style_is_for_the_synthetic_source_only(tmp_path):
    with pytest.raises(DatasetError, match=r"^style='pretrain': applies to the synthetic source only, not to 'auto'$"):
        build("auto", tmp_path, style="pretrain")
    with pytest.raises(DatasetError, match=r"^style='hardest': one of standard, pretrain, heldout$"):
        build("synthetic", tmp_path, style="hardest")
    result = build("synthetic", tmp_path, counts=(2, 1, 1), imgsz=64, style="heldout", seed=1)
    assert source_words(result.yaml_path).text == (
        f"SYNTHETIC images, 4 drawn by {synthetic.GENERATOR} style heldout seed 1 — not photographs"
    )


BAD_LINES = [
    ("0 0.5 0.5 0.2", "expected 5 fields (class x_center y_center width height), got 4: '0 0.5 0.5 0.2'"),
    ("0 0.5 abc 0.2 0.2", "y_center 'abc' is not a number"),
    ("0 1.5 0.5 0.2 0.2", "x_center 1.5 is outside [0, 1] (coordinates are normalised)"),
    ("0 0.5 0.5 0 0.2", "width 0 must be positive"),
    ("0.5 0.5 0.5 0.2 0.2", "class '0.5' is not a non-negative integer"),
]


@pytest.mark.parametrize("line, problem", BAD_LINES, ids=["fields", "number", "range", "width", "class"])
def test_a_bad_label_line_names_file_and_line(tmp_path, source, line, problem):
    label = source / "labels/train/img3.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DatasetError) as error:
        build(source, tmp_path / "out", counts=(4, 2, 1))
    assert str(error.value) == f"{label}:2: {problem}"
    assert not (tmp_path / "out").exists()


def test_an_undecodable_image_and_an_image_without_label(tmp_path, source):
    image = source / "images/train/img2.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(image))}: cannot decode image \("):
        build(source, tmp_path / "out", counts=(4, 2, 1))
    image.unlink()
    (source / "labels/train/img5.txt").unlink()
    with pytest.raises(DatasetError) as error:
        build(source, tmp_path / "out", counts=(4, 2, 1))
    assert str(error.value).startswith(
        f"{source / 'images/train/img5.jpg'}: no label file {source / 'labels/train/img5.txt'}"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_build_leaves_the_previous_one_untouched(tmp_path, source):
    good = build(source, tmp_path, counts=(4, 2, 1))
    before, yaml_before = tree(good.out_dir), good.yaml_path.read_bytes()
    (source / "labels/train/img4.txt").write_text("0 0.5 0.5 0.2 2\n")
    with pytest.raises(DatasetError, match="height 2 is outside"):
        build(source, tmp_path, counts=(4, 2, 1), seed=9)
    assert tree(good.out_dir) == before and good.yaml_path.read_bytes() == yaml_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "tiny_coco", "tiny_coco.yaml"]


def test_too_few_person_images_gives_the_numbers(tmp_path, source):
    with pytest.raises(
        DatasetError,
        match=r"^need 60 person images \(40 train \+ 10 val \+ 10 test\), "
        r"source has 7 \(",
    ):
        build(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exit_code_and_one_line_error(tmp_path, source):
    (source / "labels/train/img6.txt").write_text("0 0.5 0.5 0.2 0.2 0.1\n")
    args = [
        "dataset",
        "build",
        "--source",
        str(source),
        "--out",
        str(tmp_path / "out/tiny_coco"),
        "--yaml",
        str(tmp_path / "out/tiny_coco.yaml"),
        "--train",
        "4",
        "--val",
        "2",
        "--test",
        "1",
    ]
    done = subprocess.run([sys.executable, "-m", "mlflow_cv_yolo", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {source / 'labels/train/img6.txt'}:1: expected 5 fields "
        f"(class x_center y_center width height), got 6: '0 0.5 0.5 0.2 0.2 0.1'"
    ]
    assert not (tmp_path / "out").exists()
    (source / "labels/train/img6.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert main(args) == 0
    assert (tmp_path / "out/tiny_coco.yaml").is_file()
