"""The error breakdown (TIDE's kinds on COCOeval's matches): one hand-built case per kind, the order of the rules,
crowd regions, which error explains a missed object, delta AP50 computed by hand, and AP50 from the flags equal to
COCOeval's on real annotations."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_bootstrap import perturbed_detections

from detr_nb_utils.analysis.errors import ERROR_KINDS, analyse_errors, error_table, layer_change_sentence, layer_changes
from detr_nb_utils.training.coco_eval import results_array

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def make_gt(objects: list[tuple], n_images: int = 1, size: int = 100) -> COCO:
    """``objects``: (image_id, category_id, x, y, w, h[, iscrowd]) in a ``size`` x ``size`` image."""
    anns = [{"id": k + 1, "image_id": o[0], "category_id": o[1], "bbox": list(o[2:6]), "area": o[4] * o[5],
             "iscrowd": o[6] if len(o) > 6 else 0} for k, o in enumerate(objects)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": size, "height": size} for i in range(1, n_images + 1)],
                  "categories": CATS, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def dets(rows: list[tuple]) -> dict[str, np.ndarray]:
    """``rows``: (image_id, category_id, score, x, y, w, h)."""
    r = np.array(rows, np.float64).reshape(-1, 7)
    return {"image_id": r[:, 0].astype(np.int64), "category_id": r[:, 1].astype(np.int64), "score": r[:, 2],
            "bbox": r[:, 3:]}


def kinds(analysis) -> list[str]:
    return analysis.detections.sort_values("row")["kind"].tolist()


# objects of image 1: "a" at (10, 10, 20, 20), "b" at (60, 60, 20, 20)
OBJECTS = [(1, 1, 10, 10, 20, 20), (1, 2, 60, 60, 20, 20)]


@pytest.mark.parametrize("row, kind", [
    ((1, 1, 0.9, 10, 10, 20, 20), "true positive"),
    ((1, 2, 0.9, 10, 10, 20, 20), "classification"),  # the box of "a", called "b"
    ((1, 1, 0.9, 10, 10, 20, 8), "localisation"),  # "a", IoU 0.4 with the "a"
    ((1, 2, 0.9, 10, 10, 20, 8), "both"),  # "b" with IoU 0.4 with the "a" only
    ((1, 1, 0.9, 40, 40, 10, 10), "background"),  # touches nothing
    ((1, 1, 0.9, 25, 25, 20, 20), "background"),  # IoU 25/775 < 0.1 with the "a"
])
def test_one_detection_each_kind(row, kind):
    assert kinds(analyse_errors(make_gt(OBJECTS), dets([row]))) == [kind]


def test_duplicate_is_the_lower_scoring_detection_of_a_taken_object():
    a = analyse_errors(make_gt(OBJECTS), dets([(1, 1, 0.6, 10, 10, 20, 20), (1, 1, 0.9, 11, 10, 20, 20)]))
    assert kinds(a) == ["duplicate", "true positive"]  # COCO gives the object to the higher score, not the best IoU
    assert a.detections.set_index("row").loc[0, "gt_id"] == 1


def test_background_when_the_image_has_no_object():
    a = analyse_errors(make_gt(OBJECTS, n_images=2), dets([(2, 1, 0.9, 10, 10, 20, 20)]))
    assert kinds(a) == ["background"]


def test_localisation_is_tested_before_classification():
    # IoU 0.4 with its own class's object and 1.0 with another class's object at the same place
    gt = make_gt([(1, 1, 10, 10, 20, 8), (1, 2, 10, 10, 20, 20)])
    assert kinds(analyse_errors(gt, dets([(1, 1, 0.9, 10, 10, 20, 20)]))) == ["localisation"]


def test_classification_is_tested_before_duplicate():
    gt = make_gt([(1, 1, 10, 10, 20, 20), (1, 2, 10, 10, 20, 20)])
    a = analyse_errors(gt, dets([(1, 1, 0.9, 10, 10, 20, 20), (1, 1, 0.8, 10, 10, 20, 20)]))
    assert kinds(a) == ["true positive", "classification"]


def test_a_detection_on_a_crowd_region_is_ignored_not_an_error():
    gt = make_gt([*OBJECTS, (1, 1, 40, 0, 50, 50, 1)])
    a = analyse_errors(gt, dets([(1, 1, 0.9, 50, 10, 20, 20)]))
    assert kinds(a) == ["ignored"]
    assert len(a.objects) == 2  # a crowd region is no object: it cannot be missed
    assert a.counts().sum() == 2  # the two objects missed, nothing else


def test_missed_unless_an_error_explains_it():
    a = analyse_errors(make_gt(OBJECTS), dets([(1, 1, 0.9, 10, 10, 20, 8), (1, 1, 0.5, 10, 10, 8, 20)]))
    assert kinds(a) == ["localisation", "localisation"]
    assert a.objects.set_index("gt_id")["kind"].to_dict() == {1: "localisation", 2: "missed"}
    assert a.detections.sort_values("row")["fixes"].tolist() == [True, False]  # the oracle fixes the higher score
    assert a.counts().to_dict() == dict(zip(ERROR_KINDS, [0, 2, 0, 0, 0, 1]))


def test_score_threshold_before_matching():
    a = analyse_errors(make_gt(OBJECTS), dets([(1, 1, 0.3, 10, 10, 20, 20), (1, 2, 0.9, 60, 60, 20, 20)]),
                       min_score=0.5)
    assert kinds(a) == ["true positive"]
    assert a.objects.set_index("gt_id")["kind"].to_dict() == {1: "missed", 2: "found"}


def test_delta_ap50_by_hand():
    gt = make_gt([(1, 1, 10, 10, 20, 20), (1, 1, 60, 60, 20, 20)])  # two "a"
    # a background error above the only true positive; the second object missed
    a = analyse_errors(gt, dets([(1, 1, 0.95, 40, 0, 5, 5), (1, 1, 0.9, 10, 10, 20, 20)]))
    assert a.ap50() == pytest.approx(100 * 51 * 0.5 / 101)  # recall 0..0.5 at precision 1/2
    delta = a.delta_ap50()
    assert delta["background"] == pytest.approx(100 * 51 * 0.5 / 101)  # precision 1 up to recall 0.5
    assert delta["missed"] == pytest.approx(100 * (0.5 - 51 * 0.5 / 101))  # recall 1 at precision 1/2
    assert delta[["classification", "localisation", "both", "duplicate"]].abs().max() == 0


def test_delta_ap50_of_a_classification_error_moves_it_to_the_right_class():
    gt = make_gt(OBJECTS)
    a = analyse_errors(gt, dets([(1, 1, 0.9, 10, 10, 20, 20), (1, 1, 0.8, 60, 60, 20, 20)]))
    assert kinds(a) == ["true positive", "classification"]
    # "a": AP 1 with a false positive after its true positive; "b": AP 0, then 1 once the label is fixed
    assert a.ap50() == pytest.approx(50.0)
    assert a.delta_ap50()["classification"] == pytest.approx(50.0)
    assert a.delta_ap50()["missed"] == pytest.approx(0.0)  # the "b" is explained, not missed


def random_detections(gt: COCO, seed: int) -> dict[str, np.ndarray]:
    """Two perturbed copies of the objects, one tight and one loose (some relabelled, some dropped), plus random
    boxes: every kind of error."""
    tight = perturbed_detections(gt, 0.05, seed, n_false=5, drop=0.3)
    loose = perturbed_detections(gt, 0.4, seed + 100, n_false=0, drop=0.5)
    return {k: np.concatenate([tight[k], loose[k]]) for k in tight}


@pytest.fixture(scope="module")
def sample_gt(coco_sample: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(coco_sample / "annotations" / "instances_val2017_sample.json"))


@pytest.mark.parametrize("seed", [0, 1])
def test_ap50_from_flags_equals_cocoeval_and_fixes_never_cost(sample_gt, seed):
    d = random_detections(sample_gt, seed)
    img_ids = sorted(sample_gt.getImgIds())
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(sample_gt, sample_gt.loadRes(results_array(d)), iouType="bbox")
        ev.params.imgIds = img_ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    a = analyse_errors(sample_gt, d, img_ids)
    assert a.ap50() == pytest.approx(100 * ev.stats[1], abs=1e-9)
    counts = a.counts()
    assert (counts[list(ERROR_KINDS)] > 0).all()  # the generator makes every kind
    assert counts[list(ERROR_KINDS[:-1])].sum() + (a.detections["kind"].isin(["true positive", "ignored"])).sum() \
        == len(a.detections)
    delta = a.delta_ap50()
    assert (delta >= -1e-9).all() and delta.sum() <= 100 - a.ap50() + 1e-6


def test_error_table(sample_gt):
    d = random_detections(sample_gt, 2)
    a, at = analyse_errors(sample_gt, d), analyse_errors(sample_gt, d, min_score=0.5)
    table = error_table({"run": a}, {"run": at})
    assert table.loc["run", "AP50"] == pytest.approx(a.ap50())
    assert table.loc["run", "missed"] == at.counts()["missed"] >= a.counts()["missed"]
    assert table.attrs["min_score"] == 0.5


def test_layer_changes_name_what_later_layers_remove():
    table = pd.DataFrame({"AP50": [60.0, 70.0, 75.0], **{f"dAP50 {k}": [1.0, 1.0, 1.0] for k in ERROR_KINDS},
                          **{k: [5, 5, 5] for k in ERROR_KINDS}}, index=pd.Index([1, 2, 3], name="decoder layer"))
    table["dAP50 duplicate"], table["duplicate"] = [9.0, 6.0, 4.0], [120, 80, 50]
    table["dAP50 localisation"], table["localisation"] = [5.0, 3.0, 3.5], [40, 30, 33]
    table.attrs["min_score"] = 0.5
    changes = layer_changes(table)
    assert list(changes.index[:2]) == ["duplicate", "localisation"]
    assert changes.loc["duplicate", "count change"] == -70 and changes.loc["duplicate", "dAP50 change"] == -5.0
    assert layer_change_sentence(changes) == (
        "From decoder layer 1 to layer 3, duplicate errors scoring 0.5 or more go from 120 to 50 and cost 9.0 then "
        "4.0 AP50 points; localisation errors scoring 0.5 or more go from 40 to 33 and cost 5.0 then 3.5 AP50 points.")
