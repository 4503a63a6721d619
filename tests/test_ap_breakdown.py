"""AP by class (with intervals), by size (with object counts, an empty size explained), COCOeval's PR curves, and
the bootstrap's matched detections scored on one size range."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_errors import dets, make_gt, random_detections

from detr_nb_utils.analysis.ap_breakdown import class_ap_table, evaluate_detections, pr_curves, size_table
from detr_nb_utils.analysis.bootstrap import MatchedDetections
from detr_nb_utils.training.coco_eval import results_array


@pytest.fixture(scope="module")
def sample_gt(coco_sample: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(coco_sample / "annotations" / "instances_val2017_sample.json"))


@pytest.fixture(scope="module")
def sample(sample_gt):
    d = random_detections(sample_gt, 3)
    return d, evaluate_detections(sample_gt, d, sorted(sample_gt.getImgIds()))


def test_size_table_agrees_with_cocoeval_and_counts_objects(sample_gt, sample):
    _, ev = sample
    table = size_table(ev)
    s = ev.stats
    assert list(table.index) == ["all", "small", "medium", "large"]
    np.testing.assert_allclose(table["AP"], 100 * s[[0, 3, 4, 5]])
    np.testing.assert_allclose(table.loc["all", ["AP50", "AP75", "AR1", "AR10", "AR100"]], 100 * s[[1, 2, 6, 7, 8]])
    np.testing.assert_allclose(table.loc[["small", "medium", "large"], "AR100"], 100 * s[[9, 10, 11]])
    anns = [a for a in sample_gt.dataset["annotations"] if not a["iscrowd"]]
    areas = np.array([a["area"] for a in anns])
    assert table.loc["all", "objects"] == len(anns)
    assert table.loc["small", "objects"] == np.count_nonzero(areas < 32 ** 2)
    assert table.loc["large", "objects"] == np.count_nonzero(areas > 96 ** 2)
    assert (table["note"] == "").all()


def test_an_empty_size_is_explained_not_blank():
    gt = make_gt([(1, 1, 10, 10, 20, 20), (1, 2, 60, 60, 30, 30)])  # areas 400 (small) and 900 (small)
    table = size_table(evaluate_detections(gt, dets([(1, 1, 0.9, 10, 10, 20, 20)]), [1]))
    assert table.loc["large", "objects"] == table.loc["medium", "objects"] == 0
    assert table.loc["large", "note"] == "no large objects in these images"
    assert np.isnan(table.loc["large", "AP"])
    assert table.loc["small", "objects"] == 2 and table.loc["small", "AP"] == pytest.approx(50.0)


def test_class_ap_points_are_cocoeval_per_category_and_average_to_ap(sample_gt, sample):
    d, ev = sample
    img_ids = sorted(sample_gt.getImgIds())
    table = class_ap_table(MatchedDetections(sample_gt, d, img_ids), sample_gt, n_resamples=200)
    assert table["AP"].mean() == pytest.approx(100 * ev.stats[0])
    name = table["objects"].idxmax()
    with contextlib.redirect_stdout(io.StringIO()):
        one = COCOeval(sample_gt, sample_gt.loadRes(results_array(d)), iouType="bbox")
        one.params.imgIds, one.params.catIds = img_ids, [int(table.loc[name, "category_id"])]
        one.evaluate(), one.accumulate(), one.summarize()
    assert table.loc[name, "AP"] == pytest.approx(100 * one.stats[0])
    assert (table["low"] <= table["high"]).all() and table["low"].between(0, 100).all()
    assert table["objects"].sum() == sum(1 for a in sample_gt.dataset["annotations"] if not a["iscrowd"])
    assert table.attrs["classes_without_objects"] == len(sample_gt.getCatIds()) - len(table)
    # a class seen in a single image has a wider interval than the most common class
    single = table[table["images"] == 1]
    if len(single):
        assert (single["high"] - single["low"]).max() >= table.loc[name, "high"] - table.loc[name, "low"]


@pytest.mark.parametrize("area, stat", [("small", 3), ("medium", 4), ("large", 5)])
def test_matched_detections_of_one_size_is_cocoeval_size_ap(sample_gt, sample, area, stat):
    d, ev = sample
    m = MatchedDetections(sample_gt, d, sorted(sample_gt.getImgIds()), area=area)
    assert m.point[0] == pytest.approx(ev.stats[stat], abs=1e-12)


def test_pr_curves_are_cocoeval_precision(sample_gt, sample):
    _, ev = sample
    curves = pr_curves(ev)
    assert set(curves["iou"]) == {0.5, 0.75}
    overall = curves[(curves["iou"] == 0.5) & (curves["class"] == "all classes")]
    assert len(overall) == 101
    assert overall["precision"].mean() == pytest.approx(ev.stats[1])  # AP50 is the area under the mean curve
    assert curves.attrs["ap"][(0.75, "all classes")] == pytest.approx(100 * ev.stats[2])
    k = ev.params.catIds.index(sample_gt.getCatIds(catNms=["person"])[0])
    person = curves[(curves["iou"] == 0.75) & (curves["class"] == "person")]["precision"].to_numpy()
    np.testing.assert_array_equal(person, ev.eval["precision"][5, :, k, 0, -1])
    assert (np.diff(person) <= 0).all()  # COCO's interpolated precision never rises with recall
    with pytest.raises(ValueError, match="no IoU threshold 0.3"):
        pr_curves(ev, ious=(0.3,))
