"""Loading an official-layout checkpoint: strict, safe, with named surgery and clear errors; the one checkpoint
reader names damaged, truncated and replaced files."""
import argparse
import ast
import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

from damaged_files import flip_entry_bytes, truncate
from detr_nb_utils.models import official as published
from detr_nb_utils.models.checkpoint import CheckpointError, adapt_state_dict, load_pretrained, read_checkpoint
from detr_nb_utils.models.detr import build_detr
from random_checkpoint import make_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]


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
    path = tmp_path_factory.mktemp("ckpt") / "official_layout.pth"
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


def test_truncated_file_is_called_truncated(official, tmp_path):
    path, _ = official
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes())
    truncate(cut)
    with pytest.raises(CheckpointError, match=r"cut\.pth is damaged: it is truncated: it ends after [\d,]+ bytes.*"
                                              r"download the official file again"):
        read_checkpoint(cut)
    legacy = tmp_path / "legacy.pth"  # the pre-zip format has no directory at its end: truncation is found by PyTorch
    torch.save({"model": torch.load(path, weights_only=False)["model"]}, legacy, _use_new_zipfile_serialization=False)
    assert set(read_checkpoint(legacy)["model"]) == set(torch.load(path, weights_only=False)["model"])
    truncate(legacy)
    with pytest.raises(CheckpointError, match=r"legacy\.pth is damaged: it is truncated"):
        read_checkpoint(legacy)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=r"junk.pth is damaged: it starts with b'<htm', not a PyTorch file"):
        read_checkpoint(junk)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty.pth is damaged: it is empty"):
        read_checkpoint(empty)


def test_flipped_bytes_are_named_not_loaded(official, tmp_path):
    path, _ = official
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(path.read_bytes())
    flip_entry_bytes(bad, 16)
    assert set(torch.load(bad, weights_only=False)["model"]) == set(torch.load(path, weights_only=False)["model"])
    with pytest.raises(CheckpointError, match=r"flipped\.pth is damaged: its entry \S+ fails its CRC-32 check") as e:
        load_pretrained(build_detr(), bad)
    assert e.value.path == bad and "CRC-32" in e.value.reason


def test_every_entry_comes_back_from_one_read(official, tmp_path):
    path, sd = official
    entries = read_checkpoint(path)
    assert set(entries) == {"model", "args"} and entries["args"].lr == 1e-4 and entries["model"].keys() == sd.keys()
    bare = tmp_path / "bare.pth"  # a bare state dict comes back under "model"
    torch.save(sd, bare)
    assert set(read_checkpoint(bare)) == {"model"}


def test_extra_types_are_allowed_only_during_the_read(official, monkeypatch):
    """argparse.Namespace (the published script's args) loads, without being added to torch's global allow-list,
    on this torch (``safe_globals``) and as on torch 2.4, which lacks it (the list is restored)."""
    path, _ = official
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    read_checkpoint(path)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    with pytest.raises(Exception):  # noqa: B017 (whatever torch raises): a plain weights-only load refuses it
        torch.load(path, weights_only=True)
    monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)  # torch 2.4 has none to remove
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([hashlib.sha1])  # something a caller allowed globally stays allowed
    try:
        allowed = set(torch.serialization.get_safe_globals())
        assert read_checkpoint(path)["args"].dec_layers == 6
        assert set(torch.serialization.get_safe_globals()) == allowed and argparse.Namespace not in allowed
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def _torch_load_calls(path: Path) -> int:
    """Calls of ``torch.load`` (or of a ``load`` imported from torch) in a source file."""
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "torch"
                for a in n.names if a.name == "load"}
    return sum(isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr == "load" and isinstance(n.func.value, ast.Name)
         and n.func.value.id == "torch") or (isinstance(n.func, ast.Name) and n.func.id in imported))
        for n in ast.walk(tree))


def test_the_package_loads_pytorch_files_in_one_place():
    calls = {p.relative_to(ROOT).as_posix(): _torch_load_calls(p) for p in (ROOT / "detr_nb_utils").rglob("*.py")}
    assert {k: v for k, v in calls.items() if v} == {"detr_nb_utils/models/checkpoint.py": 1}


@pytest.fixture
def small_official(official, tmp_path, monkeypatch):
    """A small file under the official name, recorded as the published file (its size and hashes), and the
    record: the check of the real 166 MB file, on a file the test can make."""
    src, _ = official
    path = tmp_path / official_name()
    path.write_bytes(src.read_bytes())
    data = path.read_bytes()
    record = published.OfficialFile(name=path.name, url="http://localhost/x", size=len(data),
                                   sha384=hashlib.sha384(data).hexdigest(),
                                   sha256_prefix=hashlib.sha256(data).hexdigest()[:8])
    monkeypatch.setattr(published, "OFFICIAL", record)
    monkeypatch.setattr(published, "_VERIFIED", set())
    return path


def official_name() -> str:
    return published.OFFICIAL.name


def test_the_official_file_is_checked_against_its_published_hash_when_loaded(small_official, monkeypatch):
    path = small_official
    assert load_pretrained(build_detr(), path).summary().to_dict() == {"loaded": 458}
    hashed = []
    real = published.file_problem
    monkeypatch.setattr(published, "file_problem", lambda *a: hashed.append(a) or real(*a))
    read_checkpoint(path)
    assert hashed == []  # once per process per file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size: only the hash tells
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(path))} is not the published "
                                              rf"{path.name} \(its SHA-384 is [0-9a-f]+…, the published file's.*"
                                              r"Delete it and download it again with `python -m "
                                              r"detr_nb_utils.data.download checkpoint"):
        load_pretrained(build_detr(), path)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match=r"it has [\d,]+ bytes, the published file [\d,]+"):
        read_checkpoint(path)


def test_the_record_of_the_official_file():
    assert (published.OFFICIAL.name, published.OFFICIAL.size) == ("detr-r50-e632da11.pth", 166_618_694)
    assert published.OFFICIAL.sha256_prefix == published.OFFICIAL.name.split("-")[-1].removesuffix(".pth")
    assert re.fullmatch(r"[0-9a-f]{96}", published.OFFICIAL.sha384)


def test_a_file_by_another_name_is_not_held_to_the_official_hash(official, tmp_path):
    path, _ = official
    other = tmp_path / "detr-r50-finetuned.pth"
    other.write_bytes(path.read_bytes())
    assert published.check_official(other) is None and "model" in read_checkpoint(other)


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


def test_random_checkpoint_fixture_is_usable(tmp_path):
    path = make_random_checkpoint(tmp_path / "random.pth", seed=3)
    model = build_detr(dec_layers=3, num_queries=50).eval()
    report = load_pretrained(model, path)
    assert "RANDOM" not in str(report) and set(read_checkpoint(path)) == {"model", "note"}
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
