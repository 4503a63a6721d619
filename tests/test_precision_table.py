"""02's evidence for switching a study to bf16: the same checkpoint's AP in fp32 and in bf16 on the same images, the
difference with its paired bootstrap interval, and the sentence computed from them (real COCO annotations)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from detr_nb_utils.notebook.tables import precision_ap_table, precision_takeaway
from detr_nb_utils.training.coco_eval import ap_ap50, results_array
from detr_nb_utils.training.runs import PRECISION_FIELD


@pytest.fixture(scope="module")
def ann_file(coco_sample) -> Path:
    return coco_sample / "annotations" / "instances_val2017_sample.json"


@pytest.fixture(scope="module")
def gt(ann_file) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _result(ann_file: Path, precision: str, wrong_every: int = 0) -> dict:
    """An ``evaluate_checkpoint``-like result: the ground truth as detections (score 1), every ``wrong_every``-th
    box with a wrong category (0: none wrong)."""
    anns = [a for a in json.loads(ann_file.read_text())["annotations"] if not a["iscrowd"]]
    labels = np.array([a["category_id"] for a in anns], np.int64)
    if wrong_every:
        labels[::wrong_every] = np.where(labels[::wrong_every] == 1, 2, 1)
    detections = {"image_id": np.array([a["image_id"] for a in anns], np.int64), "category_id": labels,
                  "score": np.ones(len(anns), np.float32), "bbox": np.array([a["bbox"] for a in anns], np.float32)}
    return {"detections": detections, PRECISION_FIELD: precision}


def test_the_difference_its_interval_and_the_sentence(ann_file, gt):
    fp32, bf16 = _result(ann_file, "fp32"), _result(ann_file, "bf16", wrong_every=2)
    table = precision_ap_table(fp32, bf16, ann_file, n_resamples=200)
    img_ids = sorted(set(fp32["detections"]["image_id"].tolist()))
    assert table.attrs == {"n_images": len(img_ids), "n_resamples": 200}
    for name, result in (("fp32", fp32), ("bf16", bf16)):  # each column is COCOeval's AP and AP50, in percent
        ap, ap50 = ap_ap50(gt, results_array(result["detections"]), img_ids)
        assert table.loc[["AP", "AP50"], name].tolist() == pytest.approx([100 * ap, 100 * ap50], abs=1e-6)
    ap = table.loc["AP"]
    assert ap["fp32"] > 99 and ap["bf16"] < 75  # half the boxes mislabelled
    assert ap["bf16 - fp32"] == pytest.approx(ap["bf16"] - ap["fp32"])
    assert ap["low"] <= ap["bf16 - fp32"] <= ap["high"] < 0 and ap["excludes 0"]
    sentence = precision_takeaway(table)
    for number in (f"AP {ap['bf16']:.1f} in bf16", f"{ap['fp32']:.1f} in fp32", f"{ap['bf16 - fp32']:+.2f} points",
                   f"[{ap['low']:+.2f}, {ap['high']:+.2f}]", f"same {len(img_ids)} validation images",
                   "200 paired bootstrap resamples", "the interval excludes 0"):
        assert number in sentence, number


def test_identical_detections_differ_by_nothing(ann_file, gt):
    table = precision_ap_table(_result(ann_file, "fp32", 3), _result(ann_file, "bf16", 3), gt, n_resamples=50)
    assert (table[["bf16 - fp32", "low", "high"]] == 0).all().all() and not table["excludes 0"].any()
    assert "the interval includes 0" in precision_takeaway(table)


def test_results_in_the_wrong_precision_are_refused(ann_file):
    with pytest.raises(ValueError, match=r"the bf16 result was computed in 'fp32'; evaluate it with "
                                         r"precision='bf16'"):
        precision_ap_table(_result(ann_file, "fp32"), _result(ann_file, "fp32"), ann_file)
