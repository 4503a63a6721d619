"""The set-loss lesson's numbers are the matcher's and the criterion's: the three cost terms add up to the matcher's
cost matrix, the assignment is the matcher's and is the cheapest, the per-layer table sums to the training loss, and
a 3-layer cut's total is the 6-layer model's first three layers."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest
import torch

from detr_nb_utils.analysis.matching import assignment_table, cost_terms, layer_loss_sentence, layer_loss_table
from detr_nb_utils.data.categories import COCO_NAMES
from detr_nb_utils.models.detr import TINY_DETR, build_detr
from detr_nb_utils.models.loss import SetCriterion, final_layer_loss, weighted_total
from detr_nb_utils.models.matcher import HungarianMatcher
from detr_nb_utils.notebook.figures_matching import plot_cost_terms, plot_layer_losses

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = build_detr(**TINY_DETR, num_queries=12).eval()
    images, mask = torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)
    targets = [{"labels": torch.tensor([1, 18, 3]), "boxes": torch.tensor([[.3, .3, .2, .2], [.7, .6, .3, .4],
                                                                             [.5, .5, .1, .1]])},
               {"labels": torch.tensor([62]), "boxes": torch.tensor([[.4, .5, .5, .3]])}]
    with torch.no_grad():
        outputs = model(images, mask)
    return model, images, mask, outputs, targets


def test_cost_terms_add_up_to_the_matchers_matrix(batch):
    _, _, _, outputs, targets = batch
    matcher = HungarianMatcher()
    for image, target in enumerate(targets):
        terms = cost_terms(outputs, target, matcher, image)
        assert terms["total"].shape == (12, len(target["labels"]))
        np.testing.assert_allclose(terms["class"] + terms["L1"] + terms["GIoU"], terms["total"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(terms["total"], matcher.cost_matrices(outputs, targets)[image].numpy(),
                                   rtol=0, atol=1e-5)
        assert (terms["class"] <= 0).all() and (terms["L1"] >= 0).all()


def test_the_assignment_is_the_matchers_and_the_cheapest(batch):
    _, _, _, outputs, targets = batch
    matcher = HungarianMatcher()
    terms = cost_terms(outputs, targets[0], matcher, 0)
    table = assignment_table(terms, targets[0]["labels"].tolist(), COCO_NAMES)
    queries, tgt = matcher(outputs, targets)[0]
    assert dict(zip(tgt.tolist(), queries.tolist())) == dict(zip(table.index, table["query"]))
    assert list(table["class"]) == ["person", "dog", "car"]
    best = min(sum(terms["total"][q, t] for t, q in enumerate(p)) for p in itertools.permutations(range(12), 3))
    assert table["cost total"].sum() == pytest.approx(best, abs=1e-5)
    assert (table["cost total"] >= terms["total"].min(0)[table.index] - 1e-6).all()


def test_layer_table_sums_to_the_training_loss_and_depth_adds_layers(batch):
    model, images, mask, outputs, targets = batch
    six = SetCriterion(num_classes=91, dec_layers=6)
    losses = six(outputs, targets)
    table = layer_loss_table(losses, six.weight_dict, 6)
    assert list(table.index) == [f"layer {i}" for i in range(1, 7)] + ["total"]
    assert table.loc["total", "weighted"] == pytest.approx(float(weighted_total(losses, six.weight_dict)), rel=1e-6)
    assert table.loc["layer 6", "weighted"] == pytest.approx(float(final_layer_loss(losses, six.weight_dict)),
                                                             rel=1e-6)
    cut = build_detr(**TINY_DETR, num_queries=12, dec_layers=3).eval()
    cut.load_state_dict({k: v for k, v in model.state_dict().items() if k in cut.state_dict()})
    three = SetCriterion(num_classes=91, dec_layers=3)
    with torch.no_grad():
        shallow = layer_loss_table(three(cut(images, mask), targets), three.weight_dict, 3)
    # the 3-layer cut computes the 6-layer model's first three layers: its total is theirs, about half the 6-layer one
    np.testing.assert_allclose(shallow.loc[["layer 1", "layer 2", "layer 3"]].to_numpy(),
                               table.loc[["layer 1", "layer 2", "layer 3"]].to_numpy(), rtol=1e-5)
    assert shallow.loc["total", "weighted"] == pytest.approx(table.iloc[:3]["weighted"].sum(), rel=1e-5)
    sentence = layer_loss_sentence(table, 0.1)
    assert f"training loss is {table.loc['total', 'weighted']:.3f}" in sentence and "weight 0.1" in sentence
    assert f"its total would be {shallow.loc['total', 'weighted']:.3f}" in sentence


def test_lesson_figures_draw(batch):
    _, _, _, outputs, targets = batch
    terms = cost_terms(outputs, targets[0], HungarianMatcher(), 0)
    fig = plot_cost_terms(terms, assignment_table(terms, targets[0]["labels"].tolist(), COCO_NAMES))
    assert len(fig.axes) == 8  # four heat maps, each with its colour bar
    crit = SetCriterion(num_classes=91, dec_layers=6)
    fig = plot_layer_losses(layer_loss_table(crit(outputs, targets), crit.weight_dict, 6))
    assert "the total sums them" in fig.axes[0].get_title()
