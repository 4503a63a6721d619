"""Parity with the published DETR (facebookresearch/detr @ 29901c5), inside the repository.

``tests/data/parity/`` holds what the PUBLISHED code computed (``tools/make_parity_fixture.py``, run by hand with
the published source, which this repository does not ship): for 6/100, 3/100 and 3/50 (decoder layers / queries)
every decoder layer's outputs, the Hungarian matching per layer and every loss term, on weights given by the rule
in ``tests/parity_weights.py`` (each state-dict entry computed from its key and shape), two fixed padded images and
fixed targets; and the published transforms' sizes and boxes on ``tests/data/coco_sample``. Here the project's
model, matcher, loss and data pipeline are run on the same inputs and must give the same numbers.

Tolerances:
- fp32 (the published computation): every output, loss term and metric within ``atol=1e-4`` and ``rtol=1e-4``
  (``torch.testing.assert_close``), matchings identical; measured: outputs within 5e-6, loss terms within 1e-6.
  The fixture is conditioned so that the matchings and the argmax counts (cardinality_error, class_error) are
  decided far above float32 noise: each matching beats the best other assignment by at least ``MIN_MATCH_MARGIN``
  in cost (3e-3 in the fixture) and no query's two largest logits are closer than ``MIN_LOGIT_GAP`` (4.5e-3 in the
  fixture), hundreds of times what the measured differences can move them.
- the fast mode's model changes in fp32 (folded BatchNorm, its attention and dropout modules, channels-last):
  the fp32 tolerance above on every layer's outputs (measured: 2e-5), which also catches a fold that is only
  slightly wrong (leaving out the BatchNorm eps moves the logits by 3e-4, far below what bf16 rounding hides);
- bf16 fast path (autocast, channels-last, folded BatchNorm), against the published fp32 numbers: per layer the
  largest difference within ``BF16_ATOL`` and the relative RMS difference (||a - e|| / ||e||) within
  ``BF16_REL_RMS``; the terms ``loss_ce``/``loss_bbox``/``loss_giou`` of every layer within ``BF16_RTOL``
  relative. Measured on the fixture (x86 CPU, torch 2.14): logits up to 0.19 apart (3-4% RMS), boxes up to 0.047
  (1-2% RMS), loss terms up to 3.8%; plain bf16 autocast without the fast mode differs as much, so the bounds are
  about 2.5x what bf16 rounding gives, while a broken fast path (a wrong BatchNorm fold, a dropped layer) moves
  the outputs by tens of percent. Matchings and argmax counts (cardinality_error, class_error) are not compared:
  bf16 rounding exceeds the fixture's matching margins and logit gaps, and changes the matching in most layers.
- transforms: output size (h, w) exact, boxes (absolute x1, y1, x2, y2) within ``BOX_ATOL_PX`` pixels.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from parity_weights import fill_with_rule, weights_digest
from torchvision.ops import box_convert

from detr_nb_utils import HungarianMatcher, SetCriterion, build_detr, make_transforms
from detr_nb_utils.data import CocoDetection

FIXTURE = Path(__file__).parent / "data" / "parity"
COCO_SAMPLE = Path(__file__).parent / "data" / "coco_sample"
PUBLISHED_COMMIT = "29901c51d7fe8712168b8d0d64351170bc0f83e0"
VARIANTS = [(6, 100), (3, 100), (3, 50)]
IDS = [f"dec{layers}_q{queries}" for layers, queries in VARIANTS]
NUM_CLASSES = 91
FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}
MIN_MATCH_MARGIN = 1e-3  # cost units (5·L1 + 1·class + 2·GIoU)
MIN_LOGIT_GAP = 1e-3
BF16_ATOL = {"pred_logits": 0.5, "pred_boxes": 0.12}
BF16_REL_RMS = {"pred_logits": 0.10, "pred_boxes": 0.05}
BF16_RTOL = 0.10
BOX_ATOL_PX = 1e-3


def load(name: str):
    return torch.load(FIXTURE / name, weights_only=True)


@cache
def fixture(layers: int, queries: int) -> dict:
    record = load(f"dec{layers}_q{queries}.pt")
    assert (record["dec_layers"], record["num_queries"]) == (layers, queries)
    return record


@cache
def inputs() -> dict:
    return load("inputs.pt")


def per_layer(outputs: dict) -> dict[str, dict[str, torch.Tensor]]:
    """``{loss suffix: {pred_logits, pred_boxes}}``: ``""`` for the final layer, ``"_i"`` for auxiliary layer i."""
    layers = {"": outputs, **{f"_{i}": aux for i, aux in enumerate(outputs["aux_outputs"])}}
    return {s: {"pred_logits": o["pred_logits"], "pred_boxes": o["pred_boxes"]} for s, o in layers.items()}


def project_model(layers: int, queries: int) -> torch.nn.Module:
    model = build_detr(num_classes=NUM_CLASSES, num_queries=queries, dec_layers=layers)
    return fill_with_rule(model).eval()


def evaluate(layers: int, outputs: dict) -> tuple[dict, dict]:
    """The project's matching per layer and its loss terms for ``outputs`` on the fixture's targets."""
    targets = inputs()["targets"]
    matcher = HungarianMatcher()
    criterion = SetCriterion(num_classes=NUM_CLASSES, matcher=matcher, eos_coef=0.1, dec_layers=layers, aux_loss=True)
    with torch.no_grad():
        indices = {s: matcher(o, targets) for s, o in per_layer(outputs).items()}
        losses = criterion(outputs, targets)
    return indices, losses


@cache
def run_fp32(layers: int, queries: int) -> tuple[dict, dict, dict]:
    model = project_model(layers, queries)
    torch.manual_seed(0)
    with torch.no_grad():
        outputs = model(inputs()["images"], inputs()["mask"])
    return (outputs, *evaluate(layers, outputs))


@cache
def run_fast(layers: int, queries: int, amp_dtype: torch.dtype | None) -> tuple[dict, dict, dict]:
    from detr_nb_utils.models.fast import model_forward, set_fast_mode

    model = set_fast_mode(project_model(layers, queries), True)
    torch.manual_seed(0)
    with torch.no_grad():
        outputs = model_forward(model, inputs()["images"], inputs()["mask"], amp_dtype=amp_dtype, channels_last=True)
    return (outputs, *evaluate(layers, outputs))


def max_diffs(actual: dict, expected: dict) -> str:
    return ", ".join(f"{s or 'final'}: " + "/".join(f"{(actual[s][k] - expected[s][k]).abs().max().item():.1e}"
                                                    for k in ("pred_logits", "pred_boxes")) for s in expected)


def test_fixture_is_the_published_run_and_well_conditioned():
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) <= 5_000_000
    for layers, queries in VARIANTS:
        record = fixture(layers, queries)
        assert record["provenance"]["published_commit"] == PUBLISHED_COMMIT
        margins = [m for per_image in record["diagnostics"]["match_margin"].values() for m in per_image]
        assert len(margins) == 2 * layers and min(margins) >= MIN_MATCH_MARGIN, margins
        assert min(record["diagnostics"]["top2_logit_gap"].values()) >= MIN_LOGIT_GAP


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_state_dict_layout_is_the_published_one(layers, queries):
    model = build_detr(num_classes=NUM_CLASSES, num_queries=queries, dec_layers=layers)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(fixture(layers, queries)["state_dict_shapes"])
    assert shapes == fixture(layers, queries)["state_dict_shapes"]


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_rule_gives_the_weights_the_published_model_ran_with(layers, queries):
    # fails if tests/parity_weights.py or torch's random numbers changed: then regenerate the fixture
    assert weights_digest(project_model(layers, queries).state_dict()) == fixture(layers, queries)["weights_sha256"]


def _assert_layers_close(actual: dict, expected: dict, label: str) -> None:
    """Every decoder layer's logits and boxes within the fp32 tolerance, the failing layer named."""
    for suffix in expected:
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(actual[suffix][key], expected[suffix][key], **FP32_TOL,
                                       msg=lambda m, s=suffix, k=key: f"{label} layer {s or 'final'} {k}: {m}")


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_every_decoder_layer_matches_published(layers, queries):
    outputs, _, _ = run_fp32(layers, queries)
    actual, expected = per_layer(outputs), per_layer(fixture(layers, queries)["outputs"])
    assert list(actual) == list(expected)
    report = max_diffs(actual, expected)
    print(f"dec{layers}_q{queries} fp32 max |diff| logits/boxes per layer: {report}")
    _assert_layers_close(actual, expected, "fp32")


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_matching_matches_published(layers, queries):
    _, indices, _ = run_fp32(layers, queries)
    expected = fixture(layers, queries)["indices"]
    assert list(indices) == list(expected)
    for suffix, per_image in expected.items():
        for b, ((i_exp, j_exp), (i_act, j_act)) in enumerate(zip(per_image, indices[suffix], strict=True)):
            assert i_act.tolist() == i_exp.tolist() and j_act.tolist() == j_exp.tolist(), (
                f"layer {suffix or 'final'} image {b}: published {i_exp.tolist()}->{j_exp.tolist()}, "
                f"project {i_act.tolist()}->{j_act.tolist()}")


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_every_loss_term_matches_published(layers, queries):
    _, _, losses = run_fp32(layers, queries)
    expected = fixture(layers, queries)["losses"]
    assert sorted(losses) == sorted(expected)
    diffs = {k: abs(float(losses[k]) - float(v)) for k, v in expected.items()}
    print(f"dec{layers}_q{queries} fp32 loss terms, max |diff| {max(diffs.values()):.1e} ({max(diffs, key=diffs.get)})")
    for k, v in expected.items():
        torch.testing.assert_close(losses[k].float().reshape(()), v, **FP32_TOL, msg=lambda m, k=k: f"{k}: {m}")
    criterion = SetCriterion(num_classes=NUM_CLASSES, dec_layers=layers, aux_loss=True)
    assert criterion.weight_dict == fixture(layers, queries)["weight_dict"]


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_fast_mode_in_fp32_matches_published(layers, queries):
    outputs, _, _ = run_fast(layers, queries, None)
    actual, expected = per_layer(outputs), per_layer(fixture(layers, queries)["outputs"])
    assert list(actual) == list(expected)
    print(f"dec{layers}_q{queries} fast mode fp32 max |diff| logits/boxes per layer: {max_diffs(actual, expected)}")
    _assert_layers_close(actual, expected, "fast fp32")


@pytest.mark.parametrize(("layers", "queries"), VARIANTS, ids=IDS)
def test_bf16_fast_path_close_to_published(layers, queries):
    outputs, _, losses = run_fast(layers, queries, torch.bfloat16)
    actual, expected = per_layer(outputs), per_layer(fixture(layers, queries)["outputs"])
    assert list(actual) == list(expected)
    print(f"dec{layers}_q{queries} bf16 max |diff| logits/boxes per layer: {max_diffs(actual, expected)}")
    for suffix in expected:
        for key, atol in BF16_ATOL.items():
            assert actual[suffix][key].dtype == torch.float32
            torch.testing.assert_close(actual[suffix][key], expected[suffix][key], atol=atol, rtol=0,
                                       msg=lambda m, s=suffix, k=key: f"bf16 layer {s or 'final'} {k}: {m}")
            rel_rms = ((actual[suffix][key] - expected[suffix][key]).norm() / expected[suffix][key].norm()).item()
            assert rel_rms <= BF16_REL_RMS[key], f"bf16 layer {suffix or 'final'} {key}: relative RMS {rel_rms:.3f}"
    published = fixture(layers, queries)["losses"]
    terms = [k for k in published if k.startswith(("loss_ce", "loss_bbox", "loss_giou"))]
    rel = {k: abs(float(losses[k]) - float(published[k])) / abs(float(published[k])) for k in terms}
    worst = max(rel, key=rel.get)
    print(f"dec{layers}_q{queries} bf16 loss terms, max relative diff {rel[worst]:.1e} ({worst})")
    bad = {k: f"{float(losses[k]):.5f} vs published {float(published[k]):.5f}" for k, r in rel.items() if r > BF16_RTOL}
    assert not bad, f"bf16 loss terms off by more than {BF16_RTOL:.0%}: {bad}"


# ---- transforms ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("val_size", "step"), [(800, "val"), (480, "resize_480")])
def test_val_transform_gives_published_sizes_and_boxes(val_size, step):
    published = json.loads((FIXTURE / "transforms.json").read_text())
    assert published["max_size"] == 1333
    dataset = CocoDetection(COCO_SAMPLE / published["annotations"], COCO_SAMPLE / "images",
                            make_transforms("val", val_size=val_size, max_size=1333))
    assert sorted(dataset.ids) == sorted(r["image_id"] for r in published["images"])
    problems = []
    for record in published["images"]:
        image, target = dataset[dataset.ids.index(record["image_id"])]
        size = [int(v) for v in image.shape[-2:]]
        h, w = size
        boxes = box_convert(target["boxes"] * torch.tensor([w, h, w, h]), "cxcywh", "xyxy")
        expected = torch.tensor(record[step]["boxes_xyxy"], dtype=torch.float32).reshape(-1, 4)
        assert target["labels"].tolist() == record["labels"], record["image_id"]
        assert [int(v) for v in target["size"]] == size
        box_diff = (boxes - expected).abs().max().item() if len(expected) else 0.0
        if size != record[step]["size"] or box_diff > BOX_ATOL_PX:
            problems.append(f"image {record['image_id']} ({record['orig_size'][0]}x{record['orig_size'][1]}): "
                            f"published {record[step]['size'][0]}x{record[step]['size'][1]}, project {h}x{w}, "
                            f"max box diff {box_diff:.3g} px")
    assert not problems, (f"{len(problems)} of {len(published['images'])} images differ from the published "
                          f"{step} (h x w):\n  " + "\n  ".join(problems))
