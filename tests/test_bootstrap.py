"""The bootstrap: the weighted re-accumulation equals COCOeval, the intervals behave, AP at 50 detections per image,
Holm's adjustment and the bootstrap p-value."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_nb_utils.analysis.bootstrap import (MatchedDetections, _Accumulator, ap_difference, ap_interval, bootstrap_p,
                                              common_images, evaluate_images, holm, per_image_max, resample_counts,
                                              resampled_ap, seed_summary, top_per_image)
from detr_nb_utils.training.coco_eval import results_array


@pytest.fixture(scope="module")
def sample_gt(coco_sample: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(coco_sample / "annotations" / "instances_val2017_sample.json"))


def perturbed_detections(gt: COCO, noise: float, seed: int, n_false: int = 20, drop: float = 0.2) -> dict:
    """Every ground-truth box jittered by ``noise`` of its size (some dropped, some relabelled), plus
    ``n_false`` random false positives per image; scores random, higher for the truer boxes."""
    rng = np.random.default_rng(seed)
    cats = np.array(sorted(gt.getCatIds()))
    rows = []
    for img_id in sorted(gt.getImgIds()):
        info = gt.imgs[img_id]
        for a in gt.imgToAnns[img_id]:
            if rng.random() < drop:
                continue
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, noise, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() > 0.1 else rng.choice(cats)
            rows.append((img_id, cat, rng.uniform(0.3, 1.0), x + jitter[0], y + jitter[1],
                         max(w + jitter[2], 1), max(h + jitter[3], 1)))
        for _ in range(n_false):
            w, h = rng.uniform(5, info["width"] / 2), rng.uniform(5, info["height"] / 2)
            rows.append((img_id, rng.choice(cats), rng.uniform(0, 0.6), rng.uniform(0, info["width"] - w),
                         rng.uniform(0, info["height"] - h), w, h))
    r = np.array(rows, dtype=np.float64)
    return {"image_id": r[:, 0].astype(np.int64), "category_id": r[:, 1].astype(np.int64), "score": r[:, 2],
            "bbox": r[:, 3:7]}


def cocoeval_ap(gt: COCO, dets: dict, img_ids: list[int]) -> tuple[float, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results_array(dets)), iouType="bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0], ev.stats[1]


@pytest.mark.parametrize("noise", [0.05, 0.15])
def test_identity_counts_reproduce_cocoeval(sample_gt, noise):
    dets = perturbed_detections(sample_gt, noise, seed=1)
    img_ids = sorted(sample_gt.getImgIds())
    assert any(a["iscrowd"] for a in sample_gt.dataset["annotations"])  # crowd regions: COCOeval's ignore path
    ap, ap50 = _Accumulator(evaluate_images(sample_gt, dets, img_ids)).ap(np.ones((len(img_ids), 1)))
    ref_ap, ref_ap50 = cocoeval_ap(sample_gt, dets, img_ids)
    assert 0.1 < ref_ap < 0.95  # a detector that is neither hopeless nor perfect
    assert ap[0] == pytest.approx(ref_ap, abs=1e-6)
    assert ap50[0] == pytest.approx(ref_ap50, abs=1e-6)


def test_counts_equal_duplicated_images(sample_gt):
    """Weights are copies: counting an image twice scores like a dataset that holds it twice (up to score ties,
    which the jittered random scores do not have)."""
    dets = perturbed_detections(sample_gt, 0.1, seed=2)
    img_ids = sorted(sample_gt.getImgIds())
    half = len(img_ids) // 2
    counts = np.zeros(len(img_ids))
    counts[:half] = 2  # the first half of the images twice, the rest not at all
    acc = _Accumulator(evaluate_images(sample_gt, dets, img_ids))
    ap = acc.ap(counts[:, None])[0][0]
    # the same multiset as a real dataset: copy the first half under new ids
    gt = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        ds = sample_gt.dataset
        keep = img_ids[:half]
        images = [i for i in ds["images"] if i["id"] in keep]
        anns = [a for a in ds["annotations"] if a["image_id"] in keep]
        shift = 10 ** 7
        gt.dataset = {"images": images + [i | {"id": i["id"] + shift} for i in images],
                      "annotations": anns + [a | {"id": a["id"] + shift, "image_id": a["image_id"] + shift}
                                             for a in anns], "categories": ds["categories"]}
        gt.createIndex()
    sel = np.isin(dets["image_id"], keep)
    doubled = {k: np.concatenate([v[sel], v[sel] + (shift if k == "image_id" else 0)]) for k, v in dets.items()}
    ref = cocoeval_ap(gt, doubled, sorted(gt.getImgIds()))[0]
    assert ap == pytest.approx(ref, abs=1e-6)


def test_interval_contains_the_point_estimate(sample_gt):
    dets = perturbed_detections(sample_gt, 0.1, seed=3)
    out = ap_interval(MatchedDetections(sample_gt, dets, sorted(sample_gt.getImgIds())), n_resamples=200, seed=0)
    for key in ("AP", "AP50"):
        r = out[key]
        assert r["low"] < r["point"] < r["high"]
        assert 0.005 < r["high"] - r["low"] < 0.5  # a couple of dozen images: wide, but not zero and not all
    assert out["AP"]["point"] == pytest.approx(cocoeval_ap(sample_gt, dets, sorted(sample_gt.getImgIds()))[0],
                                               abs=1e-6)


def test_clearly_better_detector_excludes_zero_and_identical_is_zero(sample_gt):
    img_ids = sorted(sample_gt.getImgIds())
    good = perturbed_detections(sample_gt, 0.03, seed=4, drop=0.05)
    bad = perturbed_detections(sample_gt, 0.25, seed=5, drop=0.4)
    good_m, bad_m = MatchedDetections(sample_gt, good, img_ids), MatchedDetections(sample_gt, bad, img_ids)
    diff = ap_difference(good_m, bad_m, n_resamples=200, seed=0)
    assert diff["AP"]["point"] > 0.1 and diff["AP"]["excludes_zero"] and diff["AP"]["low"] > 0
    assert ap_difference(bad_m, good_m, n_resamples=200, seed=0)["AP"]["high"] < 0
    same = ap_difference(good_m, good_m, n_resamples=200, seed=0)
    assert same["AP"]["point"] == 0 and abs(same["AP"]["low"]) < 1e-12 and abs(same["AP"]["high"]) < 1e-12
    assert not same["AP"]["excludes_zero"]


def test_paired_resamples_are_tighter_than_unpaired(sample_gt):
    """Pairing cancels the image difficulty both detectors share: the difference's spread is smaller than the
    two APs' spreads combined as if independent."""
    img_ids = sorted(sample_gt.getImgIds())
    a = perturbed_detections(sample_gt, 0.08, seed=6)
    rng = np.random.default_rng(7)  # b: a with a fifth of its boxes moved further (errors shared with a)
    moved = rng.random(len(a["score"])) < 0.2
    b = {**a, "bbox": a["bbox"] + moved[:, None] * rng.normal(0, 0.15, a["bbox"].shape) * a["bbox"][:, [2, 3, 2, 3]]}
    matched = [MatchedDetections(sample_gt, d, img_ids) for d in (a, b)]
    diff = ap_difference(*matched, n_resamples=200, seed=0)["AP"]["std"]
    sa, sb = (ap_interval(m, n_resamples=200, seed=0)["AP"]["std"] for m in matched)
    assert diff < 0.8 * np.hypot(sa, sb)


def test_seed_summary_and_helpers():
    s = seed_summary({"dec6_q100": [0.40, 0.42], "dec3_q50": [0.30]})
    assert s.loc["dec6_q100", "seeds"] == 2 and s.loc["dec6_q100", "mean"] == pytest.approx(0.41)
    assert s.loc["dec6_q100", "std"] == pytest.approx(np.std([0.40, 0.42], ddof=1))
    assert np.isnan(s.loc["dec3_q50", "std"]) and s.loc["dec3_q50", "max"] == 0.30
    d = {"image_id": np.array([1, 1, 2]), "category_id": np.array([1, 2, 1]), "score": np.ones(3),
         "bbox": np.ones((3, 4))}
    assert common_images(d, {**d, "image_id": np.array([2, 3, 3])}) == [2]


def _cap_by_hand(dets: dict, max_det: int) -> dict:
    """Each image's ``max_det`` highest scores, with pandas (an implementation independent of top_per_image)."""
    df = pd.DataFrame({"image_id": dets["image_id"], "score": dets["score"], "row": np.arange(len(dets["score"]))})
    rows = np.sort(df.sort_values("score", ascending=False).groupby("image_id").head(max_det)["row"].to_numpy())
    return {k: v[rows] for k, v in dets.items()}


def test_ap_at_50_detections_per_image(sample_gt):
    """The 50-query cap: a 100-per-image detection set keeps each image's 50 best; a set with at most 50 per image
    is untouched, so its capped AP is its AP. pycocotools' maxDets caps per image *and category*, so it would not."""
    img_ids = sorted(sample_gt.getImgIds())
    many = perturbed_detections(sample_gt, 0.1, seed=8, n_false=70)  # more than 50 detections on every image
    assert per_image_max(many) > 50
    capped = top_per_image(many, 50)
    assert per_image_max(capped) == 50
    assert all(np.array_equal(capped[k], _cap_by_hand(many, 50)[k]) for k in many)
    m = MatchedDetections(sample_gt, many, img_ids, max_det=50)
    assert m.point[0] == pytest.approx(cocoeval_ap(sample_gt, _cap_by_hand(many, 50), img_ids)[0], abs=1e-6)
    assert m.point[0] != pytest.approx(MatchedDetections(sample_gt, many, img_ids).point[0], abs=1e-4)
    few = top_per_image(many, 50)
    assert MatchedDetections(sample_gt, few, img_ids, max_det=50).point == MatchedDetections(sample_gt, few,
                                                                                              img_ids).point


def test_resampled_ap_pairs_and_matches_ap_interval(sample_gt):
    img_ids = sorted(sample_gt.getImgIds())
    m = MatchedDetections(sample_gt, perturbed_detections(sample_gt, 0.1, seed=9), img_ids)
    samples = resampled_ap(m, resample_counts(len(img_ids), 150, seed=3), batch=40)  # batches joined in order
    ref = ap_interval(m, n_resamples=150, seed=3)["AP"]
    assert samples.shape == (150,)
    assert np.nanpercentile(samples, [2.5, 97.5]) == pytest.approx([ref["low"], ref["high"]])


def test_holm_and_bootstrap_p():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then non-decreasing: 0.04, 0.09, 0.09, 0.5
    assert holm(p)[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and np.isnan(holm(p)[3])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and (holm([0.9, 0.8]) == 1).all()
    assert bootstrap_p(np.zeros(99)) == 1  # no difference at all
    assert bootstrap_p(np.full(99, 0.2)) == pytest.approx(2 / 100)  # every resample above 0: as small as B allows
    assert bootstrap_p(np.r_[np.full(90, 1.0), np.full(9, -1.0)]) == pytest.approx(2 * 10 / 100)
