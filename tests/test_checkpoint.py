"""Loading an official-layout checkpoint: strict, safe, with named surgery and clear errors."""
import argparse
import os

import pytest
import torch

from detr_nb_utils.data.synthetic import make_random_checkpoint
from detr_nb_utils.models.checkpoint import CheckpointError, adapt_state_dict, load_pretrained, read_checkpoint
from detr_nb_utils.models.detr import build_detr


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A file laid out like detr-r50-e632da11.pth: {'model': state_dict} (plus the training script's args)."""
    torch.manual_seed(1)
    model = build_detr().eval()
    sd = model.state_dict()
    for k, v in sd.items():  # non-trivial frozen BatchNorm statistics, so they matter in the outputs
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "detr-r50-e632da11.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4, dec_layers=6)}, path)
    return path, sd


def test_official_layout_loads_strictly(official):
    path, sd = official
    model = build_detr()
    report = load_pretrained(model, path)
    assert report.summary().to_dict() == {"loaded": 458}
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_surgery_three_layers_fifty_queries_keeps_tensors_bit_identical(official):
    path, sd = official
    model = build_detr(dec_layers=3, num_queries=50)
    report = load_pretrained(model, path)
    assert report.keys("sliced") == ["query_embed.weight"]
    dropped = report.keys("dropped")
    assert len(dropped) == 54 and all(k.startswith(("transformer.decoder.layers.3.", "transformer.decoder.layers.4.",
                                                    "transformer.decoder.layers.5.")) for k in dropped)
    new = model.state_dict()
    assert len(new) == 404
    assert torch.equal(new["query_embed.weight"], sd["query_embed.weight"][:50])
    for k, v in new.items():
        if k != "query_embed.weight":
            assert torch.equal(v, sd[k]), k


def test_three_layer_model_equals_third_auxiliary_output(official):
    path, _ = official
    six, three = build_detr().eval(), build_detr(dec_layers=3).eval()
    load_pretrained(six, path)
    load_pretrained(three, path)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[0, :, 96:] = True
    with torch.no_grad():
        a, b = six(images, mask), three(images, mask)
    torch.testing.assert_close(b["pred_logits"], a["aux_outputs"][2]["pred_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["pred_boxes"], a["aux_outputs"][2]["pred_boxes"], rtol=0, atol=1e-6)
    for i in range(2):
        torch.testing.assert_close(b["aux_outputs"][i]["pred_boxes"], a["aux_outputs"][i]["pred_boxes"],
                                   rtol=0, atol=1e-6)


def test_new_num_classes_reinitialises_class_head(official):
    path, sd = official
    model = build_detr(num_classes=5, dec_layers=2, enc_layers=6)
    fresh = model.class_embed.weight.detach().clone()
    report = load_pretrained(model, path)
    assert sorted(report.keys("re-initialised")) == ["class_embed.bias", "class_embed.weight"]
    assert torch.equal(model.class_embed.weight, fresh)
    assert torch.equal(model.bbox_embed.layers[0].weight, sd["bbox_embed.layers.0.weight"])


def test_asking_more_than_the_checkpoint_has(official, tmp_path):
    path, sd = official
    small = {k: v for k, v in sd.items() if not k.startswith(("transformer.decoder.layers.3", "transformer.decoder"
                                                                                              ".layers.4",
                                                              "transformer.decoder.layers.5"))}
    small_path = tmp_path / "three.pth"
    torch.save({"model": small}, small_path)
    with pytest.raises(CheckpointError, match=r"3 dec layers.*asks for 6.*dec_layers <= 3"):
        load_pretrained(build_detr(), small_path)
    with pytest.raises(CheckpointError, match="num_queries <= 100"):
        adapt_state_dict(sd, build_detr(num_queries=101))


def test_missing_file_names_path_and_command(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist.*detr_nb_utils\.data\.download checkpoint"):
        read_checkpoint(tmp_path / "nope.pth")


def test_truncated_file(official, tmp_path):
    path, _ = official
    cut = tmp_path / "cut.pth"
    with open(path, "rb") as f:
        cut.write_bytes(f.read(os.path.getsize(path) // 2))
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated or corrupt.*download it again"):
        read_checkpoint(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="junk.pth is truncated or corrupt"):
        read_checkpoint(junk)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_object_is_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"query_embed.weight": torch.zeros(1)}, "extra": Payload()}, evil)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_checkpoint(evil)


def test_not_a_detr_checkpoint(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="resnet.pth is not a DETR checkpoint"):
        read_checkpoint(other)
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="not a DETR checkpoint"):
        read_checkpoint(other)


def test_random_checkpoint_is_labelled_and_usable(tmp_path):
    path = make_random_checkpoint(tmp_path / "random.pth", seed=3)
    model = build_detr(dec_layers=3, num_queries=50).eval()
    report = load_pretrained(model, path)
    assert report.random_weights and "RANDOM WEIGHTS" in str(report)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert torch.isfinite(out["pred_logits"]).all()
    assert out["pred_boxes"].std() > 1e-3  # calibrated BatchNorm: features neither vanish nor explode
    mtime = path.stat().st_mtime_ns
    assert make_random_checkpoint(path, seed=3) == path and path.stat().st_mtime_ns == mtime  # reused


def test_chosen_query_slots(official):
    path, sd = official
    model = build_detr(dec_layers=3, num_queries=4)
    report = load_pretrained(model, path, query_indices=[90, 3, 50, 7])
    assert report.keys("sliced") == ["query_embed.weight"]
    assert torch.equal(model.query_embed.weight, sd["query_embed.weight"][[90, 3, 50, 7]])
    with pytest.raises(CheckpointError, match="4 distinct"):
        load_pretrained(model, path, query_indices=[1, 1, 2, 3])
    with pytest.raises(CheckpointError, match=r"0\.\.99"):
        load_pretrained(model, path, query_indices=[1, 2, 3, 100])
