"""COCO evaluation: the published post-processing and COCOeval, checked on real COCO annotations."""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

from detr_nb_utils.data.coco import build_dataset, collate_fn
from detr_nb_utils.models.detr import build_detr
from detr_nb_utils.models.loss import SetCriterion
from detr_nb_utils.models.postprocess import postprocess
from detr_nb_utils.training.coco_eval import ap_ap50, results_array
from detr_nb_utils.training.evaluation import STATS, coco_evaluate, detection_arrays, evaluate

NO_OBJECT = 91


@pytest.fixture(scope="module")
def sample_gt(coco_sample: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(coco_sample / "annotations" / "instances_val2017_sample.json"))


def gt_as_outputs(coco: COCO, img_ids: list[int], label_map=None) -> tuple[dict, torch.Tensor]:
    """Fake DETR outputs that predict each image's non-crowd ground truth: one query per box with a large logit
    on its category id (``label_map`` changes it), plus two spare queries that say "no object"."""
    anns = [[a for a in coco.imgToAnns[i] if not a["iscrowd"]] for i in img_ids]
    q = max(len(a) for a in anns) + 2
    logits = torch.zeros(len(img_ids), q, NO_OBJECT + 1)
    logits[..., NO_OBJECT] = 10.0
    boxes = torch.full((len(img_ids), q, 4), 0.5)
    for b, (image_id, image_anns) in enumerate(zip(img_ids, anns)):
        h, w = coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]
        for j, a in enumerate(image_anns):
            logits[b, j, NO_OBJECT] = 0.0
            logits[b, j, label_map(a["category_id"]) if label_map else a["category_id"]] = 10.0
            xywh = torch.tensor(a["bbox"], dtype=torch.float64)
            boxes[b, j] = (box_convert(xywh[None], "xywh", "cxcywh")[0] / torch.tensor([w, h, w, h])).float()
    sizes = torch.tensor([[coco.imgs[i]["height"], coco.imgs[i]["width"]] for i in img_ids])
    return {"pred_logits": logits, "pred_boxes": boxes}, sizes


def detections_for(coco: COCO, label_map=None, batch: int = 16) -> dict[int, dict]:
    ids = sorted(coco.getImgIds())
    dets = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        outputs, sizes = gt_as_outputs(coco, chunk, label_map)
        dets.update(zip(chunk, postprocess(outputs, sizes)))
    return dets


def test_ground_truth_through_postprocess_scores_ap_1(sample_gt):
    m = coco_evaluate(sample_gt, detections_for(sample_gt))
    assert set(STATS) <= set(m)
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    present = {sample_gt.cats[a["category_id"]]["name"] for a in sample_gt.anns.values() if not a["iscrowd"]}
    assert {k for k, v in m["per_category_AP"].items() if not math.isnan(v)} == present
    assert all(m["per_category_AP"][k] == pytest.approx(1.0) for k in present)


def test_category_id_shift_scores_about_zero(sample_gt):
    cat_ids = sorted(sample_gt.getCatIds())
    shifted = {c: cat_ids[(i + 1) % len(cat_ids)] for i, c in enumerate(cat_ids)}
    m = coco_evaluate(sample_gt, detections_for(sample_gt, label_map=shifted.get))
    assert m["AP"] < 0.02


def test_fast_per_layer_ap_equals_the_full_evaluation(sample_gt):
    cat_ids = sorted(sample_gt.getCatIds())
    half_wrong = {c: cat_ids[(i + 1) % len(cat_ids)] if i % 2 else c for i, c in enumerate(cat_ids)}
    dets = detections_for(sample_gt, label_map=half_wrong.get)
    full = coco_evaluate(sample_gt, dets, per_category=False)
    assert 0.2 < full["AP"] < 0.8
    fast = ap_ap50(sample_gt, results_array(detection_arrays(dets)), sorted(dets))  # what each layer gets
    assert fast == pytest.approx((full["AP"], full["AP50"]), abs=1e-12)


def test_postprocess_never_predicts_no_object_and_scales_to_original_size():
    logits = torch.zeros(1, 2, NO_OBJECT + 1)
    logits[0, :, NO_OBJECT] = 5.0  # "no object" wins the softmax ...
    logits[0, 0, 17] = 1.0  # ... but the best real class is reported
    logits[0, 1, 90] = 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.2, 0.2]]])
    (det,) = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))  # h=100, w=200
    assert det["labels"].tolist() == [17, 90]
    prob = logits.softmax(-1)[0]
    assert torch.allclose(det["scores"], torch.stack([prob[0, 17], prob[1, 90]]))
    assert torch.allclose(det["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 10.0, 40.0, 30.0]]))


def test_image_without_detections_counts_its_ground_truth_as_missed(sample_gt):
    dets = detections_for(sample_gt)
    ids = sorted(dets)
    full = coco_evaluate(sample_gt, dets, per_category=False)["AR100"]
    with_box = next(i for i in ids if sample_gt.imgToAnns[i])
    dets[with_box] = {k: v[:0] for k, v in dets[with_box].items()}
    assert coco_evaluate(sample_gt, dets, ids, per_category=False)["AR100"] < full
    with pytest.raises(ValueError, match="no images"):
        coco_evaluate(sample_gt, {})


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    from detr_nb_utils.data.synthetic import make_synthetic_coco

    paths = make_synthetic_coco(tmp_path_factory.mktemp("syn") / "coco", n_images=5, seed=1, image_size=(64, 96))
    return build_dataset(paths.annotations, paths.images, "val", val_size=64, max_size=96)


class _Replay(nn.Module):
    """Stands in for DETR in ``evaluate``: returns the given outputs batch after batch (the loader's order)."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.backbone = nn.ModuleList([nn.Module()])
        self.backbone[0].fold_batchnorm = False  # what cached_folded_weights reads
        self.batches = iter(batches)

    def forward(self, images, mask) -> dict:
        return next(self.batches)


def layered_outputs(loader, coco: COCO) -> list[dict]:
    """Per batch, three decoder layers of known quality: layer 0 every label wrong, layer 1 right on images of odd id
    only, layer 2 (the final one) the ground truth."""
    cat_ids = sorted(coco.getCatIds())
    shift = {c: cat_ids[(i + 1) % len(cat_ids)] for i, c in enumerate(cat_ids)}.get
    batches = []
    for _, _, targets in loader:
        ids = [int(t["image_id"]) for t in targets]
        (right, _), (wrong, _) = gt_as_outputs(coco, ids), gt_as_outputs(coco, ids, shift)
        mixed = {k: torch.stack([(right if i % 2 else wrong)[k][b] for b, i in enumerate(ids)]) for k in right}
        batches.append({**right, "aux_outputs": [wrong, mixed]})
    return batches


def test_evaluate_reports_ap_per_layer_and_consistent_losses(synthetic_val):
    loader = DataLoader(synthetic_val, batch_size=2, collate_fn=collate_fn)  # 5 images: the last batch has one
    replay = _Replay(layered_outputs(loader, synthetic_val.coco))
    layered = evaluate(replay, SetCriterion(dec_layers=3), loader, synthetic_val.coco, "cpu")
    assert layered["AP_layer_2"] == layered["AP"] > 0.95  # the final layer is the model's AP
    assert layered["AP_layer_0"] < 0.05 < layered["AP_layer_1"] < 0.95  # each auxiliary layer scored on its own
    torch.manual_seed(0)
    model = build_detr(enc_layers=1, dec_layers=3, hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=7)
    criterion = SetCriterion(dec_layers=3)
    m = evaluate(model, criterion, loader, synthetic_val.coco, "cpu")
    assert m["num_images"] == 5
    terms = [m[k + s] * w for k, w in (("loss_ce", 1), ("loss_bbox", 5), ("loss_giou", 2)) for s in ("", "_0", "_1")]
    assert m["loss_total"] == pytest.approx(sum(terms))
    assert m["loss_layer_mean"] == pytest.approx(m["loss_total"] / 3)
    assert m["loss_final"] == pytest.approx(m["loss_ce"] + 5 * m["loss_bbox"] + 2 * m["loss_giou"])
    empty = DataLoader(torch.utils.data.Subset(synthetic_val, []), batch_size=2, collate_fn=collate_fn)
    with pytest.raises(ValueError, match="validation set is empty"):
        evaluate(model, criterion, empty, synthetic_val.coco, "cpu")


def test_auxiliary_layers_scored_in_worker_processes_as_in_this_one(synthetic_val):
    loader = DataLoader(synthetic_val, batch_size=2, collate_fn=collate_fn)
    batches = layered_outputs(loader, synthetic_val.coco)  # three layers of different AP: a mix-up shows
    here = evaluate(_Replay(batches), SetCriterion(dec_layers=3), loader, synthetic_val.coco, "cpu",
                    cocoeval_workers=0)
    pooled = evaluate(_Replay(batches), SetCriterion(dec_layers=3), loader, synthetic_val.coco, "cpu",
                      cocoeval_workers=2)
    keys = ("AP_layer_0", "AP50_layer_0", "AP_layer_1", "AP50_layer_1", "AP_layer_2", "AP")
    assert len({round(here[k], 6) for k in ("AP_layer_0", "AP_layer_1", "AP_layer_2")}) == 3
    assert {k: pooled[k] for k in keys} == {k: here[k] for k in keys}


def test_layer_aps_in_worker_processes_equal_the_in_process_ones(sample_gt):
    from detr_nb_utils.training.coco_eval import start_layer_aps

    layers = [detections_for(sample_gt), detections_for(sample_gt, label_map=lambda c: c + 1)]
    mixed = {i: (layers[0] if i % 2 else layers[1])[i] for i in layers[0]}  # half the images right
    results = [results_array(detection_arrays(d)) for d in (*layers, mixed)]
    img_ids = sorted(sample_gt.getImgIds())
    here = start_layer_aps(sample_gt, results, img_ids, workers=0)()
    pooled = start_layer_aps(sample_gt, results, img_ids, workers=2)()
    assert pooled == here
    assert here[0][0] > 0.95 and here[1][0] < 0.05 and here[1][0] < here[2][0] < here[0][0]


def test_worker_pool_only_for_evaluations_worth_it():
    from detr_nb_utils.training.coco_eval import POOL_MIN_IMAGES, pool_workers

    assert pool_workers(5, 1000, cores=16) == 5  # one per auxiliary layer
    assert pool_workers(5, 1000, cores=4) == 3  # one core left for the final layer
    assert pool_workers(2, 1000, cores=2) == 1
    assert pool_workers(5, POOL_MIN_IMAGES - 1, cores=16) == 0  # small: in this process
    assert pool_workers(0, 1000, cores=16) == 0  # a one-layer model has no auxiliary layers


def test_visiting_only_scored_categories_changes_no_number(sample_gt, monkeypatch):
    """COCOeval visits only the categories with ground truth or a detection: every statistic, per-category AP,
    bootstrap resample, class table and error analysis equals the one over all 80 categories, to the bit."""
    import numpy as np

    from detr_nb_utils.analysis.ap_breakdown import class_ap_table
    from detr_nb_utils.analysis.bootstrap import MatchedDetections, resample_counts
    from detr_nb_utils.analysis.errors import analyse_errors
    from detr_nb_utils.training import coco_eval

    cat_ids = sorted(sample_gt.getCatIds())
    present = {a["category_id"] for a in sample_gt.anns.values()}
    absent = next(c for c in cat_ids if c not in present)
    # half the objects found, half called a category no image holds: false positives of an unvisited class
    dets = detections_for(sample_gt, label_map=lambda c: c if c % 2 else absent)
    arrays = detection_arrays(dets)
    ids = sorted(sample_gt.getImgIds())
    visited = coco_eval.scored_categories(sample_gt, results_array(arrays, ids), ids)
    assert absent in visited and len(visited) < len(cat_ids) and set(visited) >= present

    def numbers():
        m = coco_evaluate(sample_gt, dets)
        matched = MatchedDetections(sample_gt, arrays, ids)
        errors = analyse_errors(sample_gt, arrays, ids)
        return (m, matched.accumulator.ap(resample_counts(len(ids), 50, 0)), class_ap_table(matched, sample_gt, 50),
                errors.counts(), errors.delta_ap50())

    fast = numbers()
    monkeypatch.setattr(coco_eval, "scored_categories", lambda gt, results, img_ids: sorted(gt.getCatIds()))
    full = numbers()
    assert list(fast[0]["per_category_AP"]) == list(full[0]["per_category_AP"])  # every category, in order
    for a, b in zip(fast, full):
        if isinstance(a, dict):
            a, b = {**a, **a["per_category_AP"]}, {**b, **b["per_category_AP"]}
            del a["per_category_AP"], b["per_category_AP"]
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
        elif isinstance(a, tuple):
            assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
        else:
            assert a.equals(b) and a.attrs == getattr(b, "attrs", a.attrs)
