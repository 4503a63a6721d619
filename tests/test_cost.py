"""Cost of the variants: FLOPs counted on the meta device agree with the arithmetic of the architecture (decoder
layers, queries, attention products), the full model lands where the paper says, latency is measured sanely."""
from __future__ import annotations

import time

import pytest
import torch

from detr_nb_utils.analysis.cost import cost_table, count_gflops, flop_counts, measure_latency
from detr_nb_utils.models.detr import build_detr, parameter_table

C, FFN, CLASSES = 256, 2048, 92  # hidden size, feed-forward size, class logits (91 + "no object")


def _skeleton(dec_layers: int = 6, num_queries: int = 100):
    with torch.device("meta"):
        return build_detr(dec_layers=dec_layers, num_queries=num_queries)


def _cells(n: int) -> int:
    """Feature-map size of the ResNet-50 (stride 32) for an input of n pixels: five halvings, rounding up."""
    for _ in range(5):
        n = (n + 1) // 2
    return n


def _decoder_layer_flops(q: int, s: int) -> int:
    """FLOPs (2 per multiply-add) one decoder layer adds, with the prediction heads it feeds."""
    self_attn = 4 * q * C * C + 2 * q * q * C  # q, k, v and output projections; QK^T and AV
    cross = 2 * q * C * C + 2 * s * C * C + 2 * q * s * C  # q and output on queries, k and v on the memory
    heads = q * C * CLASSES + q * (2 * C * C + 4 * C)  # class head, 3-layer box MLP
    return 2 * (self_attn + cross + 2 * q * C * FFN + heads)


S = _cells(800) * _cells(1066)  # 25 x 34 = 850 positions at 800x1066


def test_the_feature_map_arithmetic_is_the_backbones():
    """``S``, the positions the transformer sees at 800x1066, is what the ResNet-50 of build_detr produces."""
    for h, w in ((800, 1066), (800, 1333), (97, 131)):
        (features,) = _skeleton().backbone[0].body(torch.empty(1, 3, h, w, device="meta")).values()
        assert tuple(features.shape) == (1, 2048, _cells(h), _cells(w)), (h, w)


def test_three_fewer_decoder_layers_save_exactly_three_layers_of_flops():
    six, three = count_gflops(_skeleton(6)), count_gflops(_skeleton(3))
    assert (six - three) * 1e9 == pytest.approx(3 * _decoder_layer_flops(100, S), rel=1e-9)


def test_fifty_fewer_queries_save_their_share_of_three_layers():
    q100, q50 = count_gflops(_skeleton(3, 100)), count_gflops(_skeleton(3, 50))
    expected = 3 * (_decoder_layer_flops(100, S) - _decoder_layer_flops(50, S))
    assert (q100 - q50) * 1e9 == pytest.approx(expected, rel=1e-9)


def test_attention_products_are_counted():
    # a CPU forward would run the fused attention kernel, which FlopCounterMode does not count
    bmm = flop_counts(_skeleton())["Global"]["aten.bmm"]
    assert bmm == 6 * 2 * (2 * S * S * C) + 6 * 2 * (2 * 100 * 100 * C + 2 * 100 * S * C)


def test_the_published_model_at_800x1066_is_near_the_papers_86_gmacs():
    table = flop_counts(_skeleton())
    total = sum(table["Global"].values()) / 1e9
    backbone = sum(table["DETR.backbone"].values()) / 1e9
    assert 155 < total < 175  # 162.5 GFLOPs = 81.2 GMACs; the paper's 86 is in multiply-adds over real sizes
    assert 0.85 < backbone / total < 0.88  # the ResNet-50 is most of it
    assert count_gflops(_skeleton(), (800, 1333)) > total  # more pixels, more FLOPs


def test_a_real_model_is_counted_without_touching_it():
    model = build_detr(enc_layers=1, dec_layers=2, num_queries=10, hidden_dim=64, nheads=4, dim_feedforward=128)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = build_detr(enc_layers=1, dec_layers=2, num_queries=10, hidden_dim=64, nheads=4, dim_feedforward=128)
    assert count_gflops(model, (64, 96)) == count_gflops(meta.to("meta"), (64, 96)) > 0
    assert all(torch.equal(v, before[k]) and v.device.type == "cpu" for k, v in model.state_dict().items())


class _Slow(torch.nn.Module):
    """A model whose forwards take known times: the first ``first_s`` seconds, the others ``then_s``; it records
    the mode and the input of each call."""

    def __init__(self, first_s: float, then_s: float) -> None:
        super().__init__()
        self.weight, self.first_s, self.then_s, self.calls = torch.nn.Parameter(torch.zeros(1)), first_s, then_s, []

    def forward(self, images, mask):
        time.sleep(self.first_s if not self.calls else self.then_s)
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(images.shape), tuple(mask.shape)))
        return {"pred_logits": images.new_zeros(1, 1, 2)}


def test_latency_times_the_forwards_after_warmup_in_eval_mode():
    slow = _Slow(first_s=0.5, then_s=0.05).train()
    result = measure_latency(slow, (48, 64), "cpu", warmup=1, repeats=3)
    assert slow.training  # the mode is restored
    assert slow.calls == [(False, False, (1, 3, 48, 64), (1, 48, 64))] * 4  # eval, no grad, batch 1, warmup + 3
    assert 0.05 <= result["min_s"] and result["max_s"] < 0.5  # the slow warmup forward is not timed
    assert (result["device"], result["image_size"], result["repeats"], result["amp"]) == ("cpu", "48x64", 3, "fp32")
    model = build_detr(enc_layers=1, dec_layers=1, num_queries=5, hidden_dim=32, nheads=2, dim_feedforward=32)
    with pytest.raises(ValueError, match=r"the model is on meta, not on device=cpu"):
        measure_latency(model.to("meta"), (64, 64), "cpu")
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(build_detr(enc_layers=1, dec_layers=1, num_queries=1), (64, 64), repeats=0)


def test_cost_table_has_one_row_per_variant():
    variants = {"dec6_q100": _skeleton(6), "dec3_q100": _skeleton(3), "dec3_q50": _skeleton(3, 50)}
    table = cost_table(variants, device=None)
    assert list(table.index) == list(variants) and list(table.columns) == ["parameters", "trainable", "gflops",
                                                                           "gmacs"]
    assert table.loc["dec6_q100", "parameters"] == 41_524_768 and table.loc["dec3_q50", "parameters"] == 36_775_712
    assert table["gflops"].is_monotonic_decreasing and (table["gmacs"] * 2 == table["gflops"]).all()
    small = build_detr(enc_layers=1, dec_layers=1, num_queries=5, hidden_dim=32, nheads=2, dim_feedforward=32)
    timed = cost_table({"small": small}, image_size=(128, 128), device="cpu", latency_size=(64, 64), repeats=1)
    assert timed.loc["small", "latency_ms"] > 0 and timed.loc["small", "latency_size"] == "64x64"
    assert timed.loc["small", "parameters"] == parameter_table(small).loc["total", "parameters"]
