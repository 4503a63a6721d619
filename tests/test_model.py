"""The model is the published DETR-R50: layout, parameter counts, positional encoding, output contract."""
import csv
import math
from pathlib import Path

import pytest
import torch

from detr_nb_utils.model import build_detr, parameter_table
from detr_nb_utils.position_encoding import PositionEmbeddingSine

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
    from detr_nb_utils.transformer import Dropout

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
