"""The model is the published DETR-R50: layout, parameter counts, positional encoding, output contract."""
import csv
import math
from pathlib import Path

import pytest
import torch

from detr_nb_utils.models.detr import build_detr, parameter_table
from detr_nb_utils.models.position_encoding import PositionEmbeddingSine

REFERENCE_TSV = Path(__file__).parent / "data" / "detr_r50_state_dict.tsv"  # copy of ../shared/reference/


@pytest.fixture(scope="module")
def detr():
    torch.manual_seed(0)
    return build_detr().eval()


def test_state_dict_matches_published_layout(detr):
    ref = list(csv.DictReader(REFERENCE_TSV.open(), delimiter="\t"))
    sd = detr.state_dict()
    assert len(ref) == 458
    assert list(sd) == [r["key"] for r in ref]
    for r in ref:
        assert tuple(sd[r["key"]].shape) == tuple(int(x) for x in r["shape"].split(",")), r["key"]
    params = dict(detr.named_parameters())
    for r in ref:
        if r["kind"] == "param":
            assert params[r["key"]].requires_grad == (r["trainable"] == "True"), r["key"]
        else:
            assert r["key"] not in params  # frozen BatchNorm statistics and affine terms are buffers


def test_parameter_counts_match_reference(detr):
    t = parameter_table(detr)
    assert t.loc["total", "parameters"] == 41_524_768
    assert t.loc["total", "trainable"] == 41_302_368
    expected = {"backbone": 23_454_912, "transformer.encoder": 7_890_432, "transformer.decoder": 9_473_024,
                "input_proj": 524_544, "query_embed": 25_600, "class_embed": 23_644, "bbox_embed": 132_612}
    assert t["parameters"].drop("total").to_dict() == expected


def test_variant_parameter_counts():
    assert parameter_table(build_detr(dec_layers=3)).loc["total", "parameters"] == 36_788_512
    assert parameter_table(build_detr(dec_layers=3, num_queries=50)).loc["total", "parameters"] == 36_775_712


def test_forward_output_contract():
    torch.manual_seed(0)
    model = build_detr(dec_layers=3, num_queries=7).eval()
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 64:, :] = True
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 7, 92)
    assert out["pred_boxes"].shape == (2, 7, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 2
    assert all(a["pred_logits"].shape == (2, 7, 92) for a in out["aux_outputs"])
    no_aux = build_detr(dec_layers=3, num_queries=7, aux_loss=False).eval()
    no_aux.load_state_dict(model.state_dict())
    with torch.no_grad():
        out2 = no_aux(images, mask)
    assert "aux_outputs" not in out2
    torch.testing.assert_close(out2["pred_boxes"], out["pred_boxes"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_queries"):
        build_detr(num_queries=0)
    with pytest.raises(ValueError, match="dec_layers"):
        build_detr(dec_layers=0)


def test_sine_encoding_values_and_padding_invariance():
    pe = PositionEmbeddingSine(128)
    h, w = 5, 7
    pos = pe(torch.zeros(1, h, w, dtype=torch.bool))
    assert pos.shape == (1, 256, h, w)
    i, j = 2, 4
    y = (i + 1) / h * 2 * math.pi  # counts start at 1, normalised by the number of valid rows
    x = (j + 1) / w * 2 * math.pi
    expect_y = [math.sin(y), math.cos(y), math.sin(y / 10000 ** (2 / 128)), math.cos(y / 10000 ** (2 / 128))]
    torch.testing.assert_close(pos[0, :4, i, j], torch.tensor(expect_y), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 128:130, i, j], torch.tensor([math.sin(x), math.cos(x)]), atol=1e-5, rtol=0)
    # the same image inside a padded batch gets the same encoding on its valid area
    mask = torch.ones(1, h + 3, w + 2, dtype=torch.bool)
    mask[0, :h, :w] = False
    torch.testing.assert_close(pe(mask)[..., :h, :w], pos, atol=1e-5, rtol=0)


def test_pretrained_backbone_false_touches_no_network(monkeypatch):
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError("build_detr tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    build_detr(dec_layers=1, enc_layers=1)


def test_fast_mode_dropout_keeps_rate_and_scale_and_fp32_is_torchs():
    from detr_nb_utils.models.fast import CheapDropout as Dropout

    drop = Dropout(0.1).train()
    x = torch.ones(200_000, dtype=torch.bfloat16)
    y = drop(x)
    assert y.dtype == torch.bfloat16
    assert abs((y == 0).float().mean().item() - 0.1) < 0.005  # the drop rate is p
    assert torch.allclose(y[y != 0].float(), torch.tensor(1 / 0.9), rtol=1e-2)  # kept values scaled by 1/(1-p)
    x32 = torch.randn(1000)
    torch.manual_seed(3)
    a = drop(x32)
    torch.manual_seed(3)
    b = torch.nn.functional.dropout(x32, 0.1, training=True)
    assert torch.equal(a, b)  # fp32: exactly PyTorch's dropout, same random stream
    assert torch.equal(drop.eval()(x), x)


def _randomise_batchnorms(model):
    from torchvision.ops import FrozenBatchNorm2d
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def test_folded_batchnorm_is_the_same_function_with_the_same_gradients(monkeypatch):
    from detr_nb_utils.models import fast

    torch.manual_seed(0)
    model = build_detr(dec_layers=1, enc_layers=1, num_queries=5, dropout=0.0)
    _randomise_batchnorms(model)
    model.double()  # fp64: the two orders of operations agree to rounding, nothing else
    keys = list(model.state_dict())
    images, mask = torch.randn(2, 3, 64, 96, dtype=torch.float64), torch.zeros(2, 64, 96, dtype=torch.bool)
    conv = model.backbone[0].body.layer2[0].conv2
    folds = []
    real = fast.folded_conv_weights
    monkeypatch.setattr(fast, "folded_conv_weights", lambda c, bn: folds.append(c) or real(c, bn))

    def run(enabled):
        model.zero_grad()
        fast.set_fast_mode(model, enabled)
        out = model(images, mask)
        out["pred_boxes"].sum().backward()
        return out["pred_logits"].detach(), conv.weight.grad.clone()

    logits, grad = run(False)
    assert folds == []
    logits_f, grad_f = run(True)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 53 and {id(c) for c in folds} == {id(c) for c in convs}  # every ResNet-50 convolution
    torch.testing.assert_close(logits_f, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_f, grad, rtol=1e-9, atol=1e-12)  # the gradient reaches W through W * scale
    assert list(model.state_dict()) == keys


def test_fast_mode_is_explicit_state_and_reversible():
    from detr_nb_utils.models.fast import CheapDropout, FastMultiheadAttention, model_forward, set_fast_mode

    torch.manual_seed(0)
    model = build_detr(dec_layers=1, enc_layers=1, num_queries=5).eval()
    _randomise_batchnorms(model)
    params = dict(model.named_parameters())
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        before = model(images, mask)["pred_logits"]
        set_fast_mode(model, True)
        assert model.backbone[0].fold_batchnorm
        kinds = {type(m) for m in model.transformer.modules()}
        assert CheapDropout in kinds and FastMultiheadAttention in kinds and torch.nn.Dropout not in kinds
        assert all(p is params[n] for n, p in model.named_parameters())  # an optimizer keeps its parameters
        fast = model_forward(model, images, mask, torch.bfloat16, channels_last=True)["pred_logits"]
        set_fast_mode(model, False)
        after = model(images, mask)["pred_logits"]
    assert {type(m) for m in model.transformer.modules()} & {CheapDropout, FastMultiheadAttention} == set()
    assert torch.equal(before, after)  # back to the published, unfolded computation
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, before, rtol=0, atol=0.1)  # bf16: close, not equal


def test_fast_attention_is_multihead_attention():
    from detr_nb_utils.models.fast import FastMultiheadAttention as MultiheadAttention

    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, dropout=0.0)
    q, k = torch.randn(5, 2, 32, requires_grad=True), torch.randn(7, 2, 32)
    v = torch.randn(7, 2, 32)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    ref = torch.nn.MultiheadAttention.forward(attn, q, k, v, key_padding_mask=pad, need_weights=False)[0]
    mine = attn._train_attention(q, k, v, pad)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), q)
    (g_mine,) = torch.autograd.grad(mine.square().sum(), q)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-4, atol=1e-6)


def test_fast_attention_dropout_is_unbiased_and_seeded(monkeypatch):
    from detr_nb_utils.models import fast

    calls = []
    real = fast.cheap_dropout
    monkeypatch.setattr(fast, "cheap_dropout", lambda x, p: calls.append(p) or real(x, p))
    torch.manual_seed(0)
    attn = fast.FastMultiheadAttention(32, 4, dropout=0.5).train()
    q, k = torch.randn(5, 2, 32), torch.randn(7, 2, 32)
    with torch.no_grad():
        expected = attn.eval()(q, k, k, need_weights=False)[0]
        attn.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            draws = []
            for seed in range(400):
                torch.manual_seed(seed)
                draws.append(attn(q, k, k, need_weights=False)[0].float())
            torch.manual_seed(7)
            again = attn(q, k, k, need_weights=False)[0].float()
    assert calls and set(calls) == {0.5}  # the step-by-step path ran, with the module's p
    assert torch.equal(again, draws[7])  # seeded by torch.manual_seed
    assert not torch.equal(draws[0], draws[1])
    mean = torch.stack(draws).mean(0)
    assert (mean - expected).abs().max() < 0.1 * expected.abs().max()  # E[dropout(w)] = w


def test_cached_folded_weights_change_nothing_but_the_work(monkeypatch):
    from detr_nb_utils.models import fast

    torch.manual_seed(0)
    model = fast.set_fast_mode(build_detr(dec_layers=1, enc_layers=1, num_queries=5).eval(), True)
    _randomise_batchnorms(model)
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    folds = []
    real = fast.folded_conv_weights
    monkeypatch.setattr(fast, "folded_conv_weights", lambda c, bn: folds.append(c) or real(c, bn))
    with torch.no_grad():
        expected = fast.model_forward(model, images, mask, torch.bfloat16, channels_last=True)
        assert len(folds) == 53
        with fast.cached_folded_weights(model):
            first = fast.model_forward(model, images, mask, torch.bfloat16, channels_last=True)
            second = fast.model_forward(model, images, mask, torch.bfloat16, channels_last=True)
        assert len(folds) == 2 * 53  # folded once inside the block, not once per forward
    for out in (first, second):
        assert torch.equal(out["pred_logits"], expected["pred_logits"])
        assert torch.equal(out["pred_boxes"], expected["pred_boxes"])
    assert model.backbone[0].folded_weight_cache is None  # dropped on leaving the block
    with fast.cached_folded_weights(model):  # forwards that record gradients never use the cache
        fast.model_forward(model, images, mask, torch.bfloat16, channels_last=True)["pred_boxes"].sum().backward()
    assert len(folds) == 3 * 53
