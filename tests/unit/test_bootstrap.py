"""AP by size and slice, and the paired bootstrap, on constructed evaluations whose
answers are known; size AP against pycocotools' COCOeval."""

from __future__ import annotations

import numpy as np
import pytest
from detection_samples import record, scene
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from ultralytics.utils.metrics import compute_ap

from mlflow_cv_yolo.decide import bootstrap
from mlflow_cv_yolo.decide import detection_stats as stats
from mlflow_cv_yolo.errors import DatasetError
from mlflow_cv_yolo.train.per_image import ImageRecord, load_records, save_records


def test_identical_models_give_an_interval_of_zero_and_no_improvement():
    images = scene(30, 2, seed=1)
    rows = bootstrap.compare(images, images, resamples=1000)
    overall = rows[0]
    assert (overall.name, overall.delta, overall.low, overall.high) == ("overall", 0.0, 0.0, 0.0)
    # Paired: an unpaired bootstrap would put both models on different draws and spread Δ around 0.
    assert not overall.low > 0.0  # the improvement criterion with min_improvement 0


def test_a_model_that_finds_more_objects_has_a_positive_lower_bound():
    champion = scene(30, 1, seed=2)
    candidate = scene(30, 2, seed=2)
    rows = {r.name: r for r in bootstrap.compare(candidate, champion, resamples=1000)}
    assert rows["overall"].low > 0
    assert rows["overall"].low <= rows["overall"].delta <= rows["overall"].high
    # Same figures from the same seed, whatever the order of the calls.
    again = {r.name: r for r in bootstrap.compare(candidate, champion, resamples=1000)}
    assert again == rows


def test_resamples_are_seeded_draws_of_every_image_count():
    w = bootstrap.resample_weights(50, 1000, seed=3)
    assert w.shape == (1000, 50) and (w.sum(1) == 50).all()
    assert (w == bootstrap.resample_weights(50, 1000, seed=3)).all()
    assert not (w == bootstrap.resample_weights(50, 1000, seed=4)).all()
    assert abs(w.mean() - 1) < 0.01


def test_the_paired_interval_is_the_difference_on_the_same_draws():
    champion, candidate = scene(20, 1, seed=5), scene(20, 2, seed=6)
    w = bootstrap.resample_weights(20, 200, seed=0)
    a, b = stats.view(candidate), stats.view(champion)
    low, high = bootstrap.interval(a, b, w)
    diff = stats.weighted_map(a, w) - stats.weighted_map(b, w)
    assert (low, high) == tuple(np.percentile(diff, [2.5, 97.5]))


def random_images(seed: int) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(12):
        gts = [
            [x, y, x + w, y + w] for x, y, w in rng.uniform([0, 0, 8], [200, 200, 120], size=(rng.integers(0, 6), 3))
        ]
        preds = [([c + rng.normal(0, 4) for c in g], rng.uniform()) for g in gts if rng.uniform() < 0.7]
        preds += [([x, y, x + 30, y + 30], rng.uniform()) for x, y in rng.uniform(0, 200, size=(3, 2))]
        images.append(record(f"{i}.jpg", gts, preds))
    return images


def test_weighted_map_at_unit_weights_is_ultralytics_ap_per_class():
    images = random_images(seed=7)
    for area in (stats.ALL, *stats.SIZES.values()):
        v = stats.view(images, area)
        point = stats.point_map(v)
        assert stats.weighted_map(v, np.ones((1, len(images))))[0] == pytest.approx(point, abs=1e-12)


def whole_curve_map(v: stats.View, weights: np.ndarray) -> np.ndarray:
    """The reference: every prediction's point on every resample's curve."""
    weights = weights.astype(float)
    ap = np.zeros((len(weights), len(v.classes), 10))
    n_gt = weights @ v.gt
    for ci, c in enumerate(v.classes):
        sel = v.cls == c
        w = weights[:, v.img[sel]]
        for t in range(10):
            tpc = np.cumsum(w * v.tp[sel, t], axis=1)
            fpc = np.cumsum(w * v.fp[sel, t], axis=1)
            total = tpc + fpc
            precision = np.divide(tpc, total, out=np.ones_like(tpc), where=total > 0)
            ap[:, ci, t] = stats._ap_rows(tpc / (n_gt[:, ci, None] + 1e-16), precision)
    ap[n_gt == 0] = np.nan
    return np.nanmean(ap.reshape(len(weights), -1), axis=1)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # resamples with no object of a size
def test_weighted_map_on_resamples_is_the_whole_curves_figure():
    images = random_images(seed=11)
    weights = bootstrap.resample_weights(len(images), 300, seed=1)
    for area in (stats.ALL, *stats.SIZES.values()):
        v = stats.view(images, area)
        assert np.allclose(stats.weighted_map(v, weights), whole_curve_map(v, weights), atol=1e-12, equal_nan=True)


def test_vectorised_ap_is_ultralytics_compute_ap_on_curves_with_ties():
    rng = np.random.default_rng(8)
    for _ in range(20):
        hits = rng.uniform(size=30) < 0.5
        hits[rng.integers(0, 30, 5)] = False
        tpc, fpc = np.cumsum(hits), np.cumsum(~hits)
        recall = tpc / max(1, hits.sum() + rng.integers(0, 4))
        precision = tpc / (tpc + fpc)
        ours = stats._ap_rows(recall[None], precision[None])[0]
        assert ours == pytest.approx(compute_ap(recall, precision)[0], abs=1e-12)


def coco_eval(images: list[ImageRecord]) -> COCOeval:
    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    dets = []
    for i, r in enumerate(images):
        gt["images"].append({"id": i, "width": 640, "height": 640})
        for b in r.gt_boxes:
            box = xywh(b)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        dets += [
            {"image_id": i, "category_id": 1, "bbox": xywh(b), "score": float(s)}
            for b, s in zip(r.pred_boxes, r.conf, strict=True)
        ]
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def coco_ap_by_size(images: list[ImageRecord]) -> dict[str, float]:
    return dict(zip(("small", "medium", "large"), coco_eval(images).stats[3:6], strict=True))


def test_ap_by_size_agrees_with_pycocotools():
    rng = np.random.default_rng(9)
    images = []
    for i in range(6):
        gts, preds = [], []
        for side in (20, 60, 150):  # one object in each COCO size bucket, per image
            x, y = rng.uniform(0, 400, 2)
            g = [x, y, x + side, y + side * rng.uniform(0.8, 1.2)]
            gts.append(g)
            if rng.uniform() < 0.75:
                preds.append(([c + rng.normal(0, side / 25) for c in g], rng.uniform(0.3, 1)))
            if rng.uniform() < 0.5:
                preds.append(([x + 200, y + 200, x + 200 + side, y + 200 + side], rng.uniform(0, 0.8)))
        images.append(record(f"{i}.jpg", gts, preds))
    reference = coco_ap_by_size(images)
    # Matching and ignoring, prediction by prediction, are COCOeval's (its evalImgs: area range-major).
    ev = coco_eval(images)
    for a, (size, area) in enumerate(stats.SIZES.items(), start=1):
        for i, r in enumerate(images):
            e = ev.evalImgs[a * len(images) + i]
            tp, fp = stats.match(r, area)
            if e is None:
                assert not tp.any() and not fp.any(), (size, i)
                continue
            assert np.array_equal(tp.T, (e["dtMatches"] > 0) & ~e["dtIgnore"]), (size, i)
            assert np.array_equal((~tp & ~fp).T, e["dtIgnore"]), (size, i)
    ours = {size: stats.point_map(stats.view(images, area)) for size, area in stats.SIZES.items()}
    # ultralytics integrates the interpolated curve (trapezoids); COCOeval sums steps.
    assert ours == pytest.approx(reference, abs=0.02)


def test_records_round_trip_through_npz(tmp_path):
    images = scene(3, 2, seed=10) + [record("empty.jpg", [], [])]
    back = load_records(save_records(images, tmp_path / "r.npz"))
    assert [r.name for r in back] == [r.name for r in images]
    for a, b in zip(images, back, strict=True):
        for key in ("gt_cls", "gt_boxes", "pred_cls", "conf", "pred_boxes", "tp"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key


def test_slices_select_by_count_or_list(tmp_path):
    path = tmp_path / "d.slices.yaml"
    path.write_text('crowded: ">= 4 persons"\nlone: "== 1 person"\npicked: [b.jpg]\n')
    images = [record("a.jpg", [[0, 0, 9, 9]] * 4, []), record("b.jpg", [[0, 0, 9, 9]], [])]
    got = {s.name: s.select(images).tolist() for s in stats.load_slices(path, {0: "person"})}
    assert got == {"crowded": [True, False], "lone": [False, True], "picked": [False, True]}
    assert stats.slices_path(tmp_path / "d.yaml") == path
    assert stats.load_slices(tmp_path / "none.slices.yaml", {0: "person"}) == []


def test_a_bad_slice_rule_names_the_file_and_the_slice(tmp_path):
    path = tmp_path / "d.slices.yaml"
    path.write_text('crowded: "at least 4 cars"\n')
    with pytest.raises(DatasetError) as err:
        stats.load_slices(path, {0: "person"})
    assert str(err.value) == (
        f"{path}: slice 'crowded': 'at least 4 cars' is not '<op> <count> <class>' "
        "(op one of >=, <=, ==, >, <; class one of person) nor a list of image file names"
    )


def test_multi_class_data_gets_a_row_per_class_and_a_lost_class_shows():
    """Two classes, 3 objects each per image: the candidate finds one more car and one person less."""
    rng = np.random.default_rng(12)

    def images(people: int, cars: int) -> list[ImageRecord]:
        out = []
        for i in range(30):
            gts = [[10 + 60 * k, 10, 50 + 60 * k, 90] for k in range(6)]
            found = [0, 1, 2][:people] + [3, 4, 5][:cars]
            preds = [([x + rng.uniform(-2, 2) for x in gts[k]], rng.uniform(0.5, 1), int(k >= 3)) for k in found]
            out.append(record(f"{i}.jpg", gts, preds, gt_cls=[0, 0, 0, 1, 1, 1]))
        return out

    rows = bootstrap.compare(images(1, 3), images(2, 2), names={0: "person", 1: "car"}, resamples=300)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows if r.kind == "class"] == ["class person", "class car"]
    assert by_name["class person"].high < 0 < by_name["class car"].low
    assert (by_name["class person"].objects, by_name["class person"].gated) == (90, True)
    assert set(bootstrap.figures(images(1, 1), names={0: "person", 1: "car"})) == {
        "test/AP_medium",
        "test/AP_class_person",
        "test/AP_class_car",
    }
