"""The set loss: published terms, weights, per-layer sums, normalisations, checked on hand-computed cases."""
import math

import pytest
import torch

from detr_nb_utils.models.loss import (
    SetCriterion,
    final_layer_loss,
    layer_suffixes,
    per_layer_mean_loss,
    weighted_total,
)
from detr_nb_utils.models.matcher import HungarianMatcher


def layer_outputs(b, q, k, seed):
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(b, q, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(b, q, 2, generator=g) * 0.2 + 0.05
    return {"pred_logits": torch.randn(b, q, k, generator=g), "pred_boxes": torch.cat([cxcy, wh], -1)}


def targets_two_images():
    return [{"labels": torch.tensor([1, 18]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])},
            {"labels": torch.tensor([62]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.2]])}]


def test_weight_dict_and_keys_for_six_layers():
    c = SetCriterion(dec_layers=6)
    assert c.weight_dict["loss_ce"] == 1 and c.weight_dict["loss_bbox"] == 5 and c.weight_dict["loss_giou"] == 2
    assert set(c.weight_dict) == {t + s for t in ("loss_ce", "loss_bbox", "loss_giou") for s in layer_suffixes(6)}
    assert c.weight_dict["loss_bbox_4"] == 5 and "loss_ce_5" not in c.weight_dict
    assert not any("error" in k for k in c.weight_dict)


def test_total_is_sum_of_independently_matched_layers():
    layers = [layer_outputs(2, 8, 92, seed) for seed in range(3)]
    outputs = dict(layers[-1], aux_outputs=layers[:-1])
    targets = targets_two_images()
    crit = SetCriterion(dec_layers=3)
    losses = crit(outputs, targets)
    single = SetCriterion(dec_layers=1, aux_loss=False)
    per_layer = [weighted_total(single(layer, targets), single.weight_dict) for layer in layers]
    total = weighted_total(losses, crit.weight_dict)
    torch.testing.assert_close(total, sum(per_layer))
    torch.testing.assert_close(final_layer_loss(losses, crit.weight_dict), per_layer[-1])
    torch.testing.assert_close(per_layer_mean_loss(losses, crit.weight_dict, 3), total / 3)
    # logged metrics never enter the total
    losses["class_error"] = losses["class_error"] + 1e6
    losses["cardinality_error"] = losses["cardinality_error"] + 1e6
    torch.testing.assert_close(weighted_total(losses, crit.weight_dict), total)


def test_no_object_weighting_by_hand():
    """num_classes 3: logits [B=1, Q=3, 4]; one target of class 2 on query 1's box."""
    logits = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 2.0, -1.0], [0.5, -0.5, 0.0, 1.5]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4], [0.8, 0.8, 0.1, 0.1]]])
    target = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    crit = SetCriterion(num_classes=3, eos_coef=0.1, dec_layers=1, aux_loss=False)
    out = crit({"pred_logits": logits, "pred_boxes": boxes}, target)
    logp = logits[0].log_softmax(-1)
    nll = [-logp[0, 3].item(), -logp[1, 2].item(), -logp[2, 3].item()]  # only query 1 is matched
    expected = (0.1 * nll[0] + 1.0 * nll[1] + 0.1 * nll[2]) / (0.1 + 1.0 + 0.1)
    assert out["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["class_error"].item() == pytest.approx(0.0)  # query 1's argmax is class 2
    # argmax != "no object" for queries 1 (class 2) only: |1 - 1| = 0
    assert out["cardinality_error"].item() == pytest.approx(0.0)


def test_box_terms_are_divided_by_number_of_boxes():
    """Three target boxes over two images; one prediction is off by 0.1 in cx."""
    targets = targets_two_images()
    boxes = torch.full((2, 4, 4), 0.9)
    boxes[0, 0] = targets[0]["boxes"][0] + torch.tensor([0.1, 0, 0, 0])
    boxes[0, 1] = targets[0]["boxes"][1]
    boxes[1, 2] = targets[1]["boxes"][0]
    boxes[:, :, 2:] = torch.where(boxes[:, :, 2:] == 0.9, torch.tensor(0.05), boxes[:, :, 2:])
    logits = torch.zeros(2, 4, 92)
    crit = SetCriterion(dec_layers=1, aux_loss=False, matcher=HungarianMatcher(cost_class=0, cost_bbox=5, cost_giou=0))
    out = crit({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert out["loss_bbox"].item() == pytest.approx(0.1 / 3, rel=1e-5)
    # box (0.6,0.5,.2,.3) vs (0.5,0.5,.2,.3): widths 0.2 overlap 0.1 -> IoU = 0.1*0.3 / (2*0.06 - 0.03); hull = union
    iou = 0.03 / 0.09
    assert out["loss_giou"].item() == pytest.approx((1 - iou) / 3, rel=1e-4)


def test_image_without_targets_and_empty_batch():
    crit = SetCriterion(dec_layers=2)
    layers = [layer_outputs(2, 5, 92, s) for s in range(2)]
    outputs = dict(layers[-1], aux_outputs=layers[:-1])
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    out = crit(outputs, empty)
    assert out["loss_bbox"].item() == 0 and out["loss_giou"].item() == 0
    assert math.isfinite(out["loss_ce"].item()) and out["loss_ce"].item() > 0
    # every query is "no object", so the plain and weighted means agree
    expected = torch.nn.functional.cross_entropy(layers[-1]["pred_logits"].flatten(0, 1),
                                                 torch.full((10,), 91))
    torch.testing.assert_close(out["loss_ce"], expected)


def test_gradients_flow_to_logits_and_boxes():
    layers = [layer_outputs(2, 6, 92, s) for s in range(2)]
    for layer in layers:
        layer["pred_logits"].requires_grad_(True)
        layer["pred_boxes"].requires_grad_(True)
    outputs = dict(layers[-1], aux_outputs=layers[:-1])
    crit = SetCriterion(dec_layers=2)
    weighted_total(crit(outputs, targets_two_images()), crit.weight_dict).backward()
    for layer in layers:
        assert layer["pred_logits"].grad.abs().sum() > 0 and layer["pred_boxes"].grad.abs().sum() > 0
