"""Hugging Face's names for the published DETR-R50 (``models/hf_layout.py``): official -> Hugging Face -> official is
bit-identical in both backbone layouts, ``facebook/detr-resnet-50``'s layout (timm backbone, BatchNorm counters)
loads through ``load_pretrained`` and ``model_from_checkpoint``, and what is not DETR-R50 is refused by name. Needs
``safetensors`` (the export extra, which the dev extra includes) to write and read the files; no transformers."""
from __future__ import annotations

import json

import pytest
import safetensors.torch as st
import torch
from parity_weights import rule_state_dict

from detr_nb_utils.models.checkpoint import CheckpointError, load_pretrained
from detr_nb_utils.models.detr import TINY_DETR, build_detr
from detr_nb_utils.models.hf_layout import (
    BACKBONE_LAYOUTS,
    HF_BACKBONE,
    HFCheckpointError,
    HFLayoutError,
    hf_to_official,
    is_hf_checkpoint,
    official_to_hf,
    read_hf_checkpoint,
)
from detr_nb_utils.training.inference import model_from_checkpoint


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    """The published DETR-R50's 458 entries with the parity rule's deterministic values."""
    return rule_state_dict(build_detr().state_dict())


def _save(path, state: dict[str, torch.Tensor]) -> None:
    st.save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def _timm_hub_layout(official: dict) -> dict:
    """What facebook/detr-resnet-50's model.safetensors holds: the timm backbone, with the BatchNorm counters."""
    hf = official_to_hf(official, backbone="timm")
    counters = {k.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(0) for k in hf
                if k.startswith(HF_BACKBONE) and k.endswith("running_mean")}
    return {**hf, **counters}


@pytest.mark.parametrize("backbone", BACKBONE_LAYOUTS)
def test_official_to_hf_to_official_is_bit_identical(official, backbone, tmp_path):
    hf = official_to_hf(official, backbone=backbone)
    assert len(hf) == len(official) + 18 * 2 * (3 - 1)  # 18 attentions: packed weight and bias -> q, k, v each
    assert "model.encoder.layers.0.self_attn.q_proj.weight" in hf and "class_labels_classifier.weight" in hf
    path = tmp_path / "model.safetensors"
    _save(path, hf)  # through the file format too
    back, config = read_hf_checkpoint(path)
    assert config == {} and list(back) == list(official)  # the official key order as well
    for key, value in official.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_the_hub_layout_loads_into_a_variant_bit_for_bit(official, tmp_path):
    """A folder laid out like facebook/detr-resnet-50 (timm backbone, config.json, BatchNorm counters) as the
    ``checkpoint`` of a 3-layer, 50-query variant: the same surgery as the official file."""
    folder = tmp_path / "detr-resnet-50"
    folder.mkdir()
    _save(folder / "model.safetensors", _timm_hub_layout(official))
    (folder / "config.json").write_text(json.dumps({"model_type": "detr", "use_timm_backbone": True,
                                                    "backbone": "resnet50", "dilation": False}))
    assert is_hf_checkpoint(folder) and is_hf_checkpoint(folder / "model.safetensors")
    model = build_detr(dec_layers=3, num_queries=50)
    report = load_pretrained(model, folder)
    assert len(report.keys("sliced")) == 1 and len(report.keys("dropped")) == 3 * 18  # decoder layers 3-5 dropped
    state = model.state_dict()
    for key, value in state.items():
        want = official[key][:50] if key == "query_embed.weight" else official[key]
        assert torch.equal(value, want), key


def test_model_from_checkpoint_reads_a_hugging_face_folder(official, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    cut = {k: v for k, v in official.items() if not k.startswith("transformer.decoder.layers.5.")}
    _save(folder / "model.safetensors", official_to_hf(cut))
    model, labels, sizes = model_from_checkpoint(folder)
    assert model.dec_layers == 5 and labels.num_classes == 91 and sizes == {"min_size": 800, "max_size": 1333}
    assert torch.equal(model.state_dict()["input_proj.weight"], official["input_proj.weight"])


def test_in_memory_names_of_newer_transformers_are_accepted(official):
    hf = official_to_hf(official)
    renamed = {k.replace("model.backbone.conv_encoder.model.", "model.backbone.model.")
               .replace(".out_proj.", ".o_proj.").replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2."): v
               for k, v in hf.items()}
    back = hf_to_official(renamed)
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_the_tiny_backbone_has_no_hugging_face_names():
    with pytest.raises(HFLayoutError, match="only the DETR-R50 family"):
        official_to_hf(build_detr(**TINY_DETR).state_dict())


def test_what_is_not_detr_r50_is_refused_by_name(official, tmp_path):
    hf = official_to_hf(official, backbone="timm")
    deeper = {**hf, f"{HF_BACKBONE}layer3.6.conv1.weight": hf[f"{HF_BACKBONE}layer3.5.conv1.weight"]}  # ResNet-101
    with pytest.raises(HFLayoutError, match=r"\(3, 4, 7, 3\) bottleneck blocks.*ResNet-50"):
        hf_to_official(deeper)
    with pytest.raises(HFLayoutError, match="mask_head"):
        hf_to_official({**hf, "mask_head.lay1.weight": torch.zeros(1)})  # the panoptic model
    no_k = {k: v for k, v in hf.items() if k != "model.encoder.layers.2.self_attn.k_proj.weight"}
    with pytest.raises(HFLayoutError, match=r"encoder.layers.2.self_attn.*\['q', 'v'\]"):
        hf_to_official(no_k)
    folder = tmp_path / "dc5"
    folder.mkdir()
    _save(folder / "model.safetensors", hf)
    (folder / "config.json").write_text(json.dumps({"model_type": "detr", "backbone": "resnet50", "dilation": True}))
    with pytest.raises(CheckpointError, match=f"{folder}.*dilation"):
        load_pretrained(build_detr(), folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "detr", "backbone": "resnet101"}))
    with pytest.raises(HFCheckpointError, match="resnet101, not ResNet-50"):
        read_hf_checkpoint(folder)


def test_unreadable_hugging_face_paths_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_pretrained(build_detr(), empty)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=f"{broken} is not a readable safetensors file"):
        load_pretrained(build_detr(), broken)
    with pytest.raises(HFCheckpointError, match="does not exist"):
        read_hf_checkpoint(tmp_path / "missing.safetensors")
    run_folder = tmp_path / "run"  # a run folder's config.json is not a transformers config
    run_folder.mkdir()
    (run_folder / "config.json").write_text(json.dumps({"profile": "study", "dec_layers": 6}))
    assert not is_hf_checkpoint(run_folder)
