"""Attention maps recorded with hooks: the model computes the same thing with and without them, the hooks go away,
the maps are distributions over the image's own (unpadded) cells, and points map to the right cell."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from detr_nb_utils.analysis.attention import (
    attention_modules,
    decoder_attention_of,
    detected_objects,
    encoder_attention_at,
    map_extent,
    record_attention,
    run_with_attention,
)
from detr_nb_utils.models.detr import build_detr

# two images padded to 96x128: the first fills it (feature map 3x4), the second is 64x70 (cells 2x3)
SIZE, SMALL = (96, 128), (64, 70)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_detr(enc_layers=2, dec_layers=2, num_queries=10, hidden_dim=64, nheads=4,
                      dim_feedforward=128).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, *SIZE)
    mask = torch.zeros(2, *SIZE, dtype=torch.bool)
    mask[1, SMALL[0]:], mask[1, :, SMALL[1]:] = True, True
    images[1][:, mask[1]] = 0
    return images, mask


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _flat(outputs: dict) -> list[torch.Tensor]:
    aux = [t for a in outputs["aux_outputs"] for t in (a["pred_logits"], a["pred_boxes"])]
    return [outputs["pred_logits"], outputs["pred_boxes"], *aux]


def test_outputs_are_unchanged_and_hooks_are_gone_afterwards(tiny, batch):
    assert _hooks(tiny) == 0
    with torch.no_grad():
        before = _flat(tiny(*batch))
        with record_attention(tiny) as record:
            assert _hooks(tiny) == 2 * (2 + 2) + 1
            during = _flat(tiny(*batch))
        after = _flat(tiny(*batch))
    assert _hooks(tiny) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # inside, attention runs the explicit softmax path instead of the fused kernel: equal up to rounding
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, during))
    assert all(t is not None for t in record.encoder + record.decoder)


def test_hooks_are_removed_after_an_exception(tiny):
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(tiny):
            raise RuntimeError("boom")
    assert _hooks(tiny) == 0


def test_training_mode_is_refused():
    model = build_detr(enc_layers=1, dec_layers=1, num_queries=2, hidden_dim=32, nheads=2, dim_feedforward=32)
    with pytest.raises(ValueError, match=r"call model\.eval\(\) first"):
        with record_attention(model.train()):
            pass


def test_shapes_and_the_image_geometry(tiny, batch):
    _, record = run_with_attention(tiny, *batch)
    assert [e.shape for e in record.encoder] == [(2, 12, 12)] * 2
    assert [d.shape for d in record.decoder] == [(2, 10, 12)] * 2
    assert record.feature_shape == (3, 4) and record.cell_size() == (32.0, 32.0)
    assert (record.valid_shape(0), record.valid_shape(1)) == ((3, 4), (2, 3))
    assert (record.input_size(0), record.input_size(1)) == (SIZE, SMALL)


def test_maps_are_distributions_over_the_unpadded_cells(tiny, batch):
    _, record = run_with_attention(tiny, *batch)
    padded = record.feature_mask[1].flatten()  # (S,) True on the cells of image 1 that are padding
    assert padded.sum() == 12 - 6
    for weights in (*record.decoder, *record.encoder):  # [B, rows, S]
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-5)
        assert weights[1][:, padded].abs().max() < 1e-6
        assert weights[1][:, ~padded].sum(-1).min() > 1 - 1e-5
    for layer in (0, 1, -1):
        amap = decoder_attention_of(record, layer, 1, 7)
        assert amap.shape == (2, 3) and torch.equal(amap, record.decoder[layer][1, 7].reshape(3, 4)[:2, :3])
        assert amap.sum().item() == pytest.approx(1, abs=1e-5)


def test_a_point_selects_the_feature_cell_under_it(tiny, batch):
    _, record = run_with_attention(tiny, *batch)
    identity = torch.eye(12).expand(2, 12, 12)  # position s attends to itself only: the map shows which cell
    record = dataclasses.replace(record, encoder=[identity])
    original = (2 * SMALL[0], 2 * SMALL[1])  # image 1 at twice the size the model saw
    for (y, x), cell in [((0, 0), (0, 0)), ((70, 139), (1, 2)), ((63, 127), (0, 1)), ((64, 128), (1, 2))]:
        amap = encoder_attention_at(record, 0, 1, (y, x), original)
        assert amap.shape == (2, 3) and amap[cell] == 1 and amap.sum() == 1, ((y, x), cell)
    amap = encoder_attention_at(record, 0, 0, (95, 127), SIZE)
    assert amap.shape == (3, 4) and amap[2, 3] == 1
    with pytest.raises(ValueError, match=r"point_yx_in_pixels \(128, 0\) lies outside the image of size \(128, 140\)"):
        encoder_attention_at(record, 0, 1, (128, 0), original)
    # the 2x3 cells cover 64x96 pixels of the 64x70 input: a little past the image's right edge
    assert map_extent(record, 1, original) == pytest.approx((0, 96 * 2, 64 * 2, 0))


def test_detected_objects_are_the_confident_queries_best_first(tiny, batch):
    outputs, _ = run_with_attention(tiny, *batch)
    everything = detected_objects(outputs, 0, threshold=0.0)
    assert sorted(everything["query"]) == list(range(10)) and everything["score"].is_monotonic_decreasing
    assert list(everything.columns) == ["query", "label", "score", "cx", "cy", "w", "h"]
    assert (everything["label"] < 91).all()  # never "no object"
    assert detected_objects(outputs, 0, threshold=1.01).empty


def test_the_published_layout_has_six_and_six_attention_modules():
    with torch.device("meta"):
        model = build_detr()
    modules = attention_modules(model)
    assert [len(modules["encoder"]), len(modules["decoder"])] == [6, 6]
    assert modules["decoder"][0] is model.transformer.decoder.layers[0].multihead_attn
