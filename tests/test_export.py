"""Export (``python -m detr_nb_utils.export``): the Hugging Face folder computes what the project's model computes
(outputs to 1e-4 on real padded images, the same loss as ``SetCriterion``), ``pipeline`` runs on it offline, its
preprocessor is the validation transform, its config carries the run's labels, layers, queries and dropout, its card
is written from the run folder; ONNX Runtime equals PyTorch to 1e-4 for the tiny DETR and DETR-R50 at two image sizes
and batches; the tiny backbone is refused for Hugging Face with the reason; the core works without the export
packages.

DETR-R50 gets the parity rule's deterministic weights (``tests/parity_weights.py``); images are small (shorter side
128 px) to keep a 41M-parameter model affordable on a CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from parity_weights import fill_with_rule
from torchvision import tv_tensors

from detr_nb_utils.data.coco import build_dataset, collate_fn
from detr_nb_utils.data.label_map import LabelMap
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.data.transforms import make_transforms
from detr_nb_utils.export import ExportError, check_onnx, export_hf, export_onnx, freeze_as_published, hf_config
from detr_nb_utils.export import hugging_face
from detr_nb_utils.export.hugging_face import PUBLISHED_FROZEN, hf_detr
from detr_nb_utils.export.cli import main
from detr_nb_utils.models.detr import build_detr
from detr_nb_utils.models.loss import SetCriterion, weighted_total
from detr_nb_utils.training import engine, runs
from detr_nb_utils.training.config import TINY_CHECKPOINT, make_config
from detr_nb_utils.training.inference import model_from_checkpoint, read_image

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"min_size": 128, "max_size": 213}
ANNOTATIONS = Path("annotations") / "instances_val2017_sample.json"
TOL = 1e-4

try:  # transformers 5 builds its DETR on torch 2.6 or newer only; the ONNX tests run from torch 2.4 (make test-oldest)
    hf_detr("the tests")
    HF_UNUSABLE = None
except ImportError as e:
    HF_UNUSABLE = str(e)
needs_hf = pytest.mark.skipif(HF_UNUSABLE is not None, reason=f"transformers' DETR is not usable here: {HF_UNUSABLE}")


def _cli(argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def r50() -> torch.nn.Module:
    """The published DETR-R50 (6/100, 91 classes) with the parity rule's weights, eval mode, no auxiliary outputs."""
    return fill_with_rule(build_detr(aux_loss=False)).eval()


@pytest.fixture(scope="module")
def hf_dir(r50, tmp_path_factory) -> Path:
    if HF_UNUSABLE is not None:
        pytest.skip(f"transformers' DETR is not usable here: {HF_UNUSABLE}")
    return export_hf(r50, LabelMap.coco(), tmp_path_factory.mktemp("hf") / "detr-r50", dropout=0.1,
                     card="# a card\n", **SIZES)


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return hf_detr("the tests").DetrForObjectDetection.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def batch(coco_sample):
    """Two real COCO images of different shapes through the validation transform, padded into one batch."""
    ds = build_dataset(coco_sample / ANNOTATIONS, coco_sample / "images", "val", val_size=SIZES["min_size"],
                       max_size=SIZES["max_size"])
    images, mask, targets = collate_fn([ds[0], ds[1]])
    assert mask.any() and all(len(t["labels"]) for t in targets)  # padding, and boxes to match
    return images, mask, targets


def test_the_config_carries_labels_layers_queries_and_the_published_dropout(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    assert {config[k] for k in ("dropout", "attention_dropout", "activation_dropout")} == {0.1}
    assert (config["decoder_layers"], config["encoder_layers"], config["num_queries"]) == (6, 6, 100)
    assert len(config["id2label"]) == 91 and config["id2label"]["1"] == "person" and config["id2label"]["12"] == "N/A"
    assert config["label2id"]["toothbrush"] == 90 and "N/A" not in config["label2id"]
    assert config["use_timm_backbone"] is False and config["auxiliary_loss"] is False
    assert sorted(p.name for p in hf_dir.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                         "preprocessor_config.json"]


@needs_hf
def test_a_variant_with_its_own_classes_gets_its_layers_queries_and_label_map():
    with torch.device("meta"):  # shapes only
        model = build_detr(num_classes=2, dec_layers=3, num_queries=50)
    labels = LabelMap.from_categories([{"id": 12, "name": "widget"}, {"id": 7, "name": "gift box"}])
    config = hf_config(model, labels, dropout=0.2, eos_coef=0.05)
    assert (config.decoder_layers, config.num_queries, config.num_labels) == (3, 50, 2)
    assert config.id2label == {0: "gift box", 1: "widget"} and config.label2id == {"gift box": 0, "widget": 1}
    assert config.category_ids == [7, 12] and config.eos_coefficient == 0.05
    assert (config.dropout, config.attention_dropout, config.activation_dropout) == (0.2, 0.2, 0.2)
    with pytest.raises(ExportError, match="2 classes, its label map 91"):
        hf_config(model, LabelMap.coco())


@torch.no_grad()
def test_hugging_face_outputs_equal_ours_on_real_padded_images(hf_model, r50, batch):
    images, mask, _ = batch
    ours = r50(images, mask)
    theirs = hf_model(pixel_values=images, pixel_mask=(~mask).long())
    torch.testing.assert_close(theirs.logits, ours["pred_logits"], atol=TOL, rtol=0)
    torch.testing.assert_close(theirs.pred_boxes, ours["pred_boxes"], atol=TOL, rtol=0)


@torch.no_grad()
def test_the_loss_transformers_computes_equals_the_set_criterion(hf_model, r50, batch):
    """transformers' DETR loss on the exported model (auxiliary_loss off, as exported) against the project's
    SetCriterion without auxiliary losses, on the same batch: total and every term."""
    images, mask, targets = batch
    criterion = SetCriterion(num_classes=91, aux_loss=False, dec_layers=r50.dec_layers)
    terms = criterion(r50(images, mask), targets)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    theirs = hf_model(pixel_values=images, pixel_mask=(~mask).long(), labels=labels)
    total = weighted_total(terms, criterion.weight_dict)
    assert theirs.loss.item() == pytest.approx(total.item(), rel=1e-5)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert theirs.loss_dict[name].item() == pytest.approx(terms[name].item(), rel=1e-5, abs=1e-6), name


def test_freeze_as_published_trains_the_published_parameters(hf_model, r50):
    """transformers leaves the stem and layer1 trainable (the card says so); freeze_as_published (the card's snippet)
    freezes exactly what the published model freezes."""
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert trainable(hf_model) == sum(p.numel() for p in r50.parameters())  # everything, stem included
    frozen = freeze_as_published(hf_model)
    try:
        assert trainable(hf_model) == trainable(r50) and frozen == 222_400
    finally:
        for p in hf_model.parameters():
            p.requires_grad_(True)


def test_the_preprocessor_is_the_validation_transform(hf_dir, coco_sample):
    processor = hf_detr("the tests").AutoImageProcessor.from_pretrained(hf_dir)
    transform = make_transforms("val", val_size=SIZES["min_size"], max_size=SIZES["max_size"])
    for path in sorted((coco_sample / "images").glob("*.jpg"))[:3]:
        pixels = read_image(path)  # uint8 RGB, as the dataset decodes it
        ours = transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        theirs = processor(images=pixels, return_tensors="pt")["pixel_values"][0]
        assert theirs.shape == ours.shape, path.name
        assert (theirs - ours).abs().max().item() < 1e-5, path.name


def test_pipeline_runs_offline(hf_dir, coco_sample):
    image = sorted((coco_sample / "images").glob("*.jpg"))[0]
    code = ("import json, sys\nfrom transformers import pipeline\n"
            "detector = pipeline('object-detection', model=sys.argv[1])\n"
            "print(json.dumps(detector(sys.argv[2], threshold=0.0)))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(hf_dir), str(image)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    names = set(json.loads((hf_dir / "config.json").read_text())["id2label"].values())
    assert len(found) == 100 and {d["label"] for d in found} <= names  # one detection per query at threshold 0
    assert all(d["box"]["xmin"] <= d["box"]["xmax"] and d["box"]["ymin"] <= d["box"]["ymax"] for d in found)


@needs_hf
def test_an_export_that_does_not_check_out_leaves_nothing(r50, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(hugging_face, "TOLERANCE", -1.0)  # no difference can pass
    with pytest.raises(ExportError, match="outputs differ.*not written"):
        export_hf(r50, LabelMap.coco(), out, **SIZES)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial folder either
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        export_hf(r50, LabelMap.coco(), out, check=False, **SIZES)
    assert (out / "keep.txt").read_text() == "mine"


def test_the_tiny_backbone_is_refused_for_hugging_face_with_the_reason(tmp_path):
    out = tmp_path / "tiny-hf"
    code, text = _cli(["--checkpoint", ROOT / TINY_CHECKPOINT, "--to", "hf", "--out", out])
    assert code == 2 and "no Hugging Face counterpart" in text and "--to onnx" in text
    assert not out.exists()


def _dynamic_graph(path: Path) -> None:
    graph = onnx.load(str(path)).graph
    (images,) = graph.input
    assert images.name == "images" and [o.name for o in graph.output] == ["pred_logits", "pred_boxes"]
    dims = images.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, height, width dynamic


def test_onnx_runtime_equals_pytorch_for_the_tiny_detr(tmp_path):
    out = tmp_path / "tiny.onnx"
    code, text = _cli(["--checkpoint", ROOT / TINY_CHECKPOINT, "--to", "onnx", "--out", out])
    assert code == 0, text
    _dynamic_graph(out)
    model = model_from_checkpoint(ROOT / TINY_CHECKPOINT)[0]
    diffs = check_onnx(model, out, sizes=((96, 128), (160, 96)), batches=(1, 3))
    assert max(d for v in diffs.values() for d in v.values()) <= TOL


def test_onnx_runtime_equals_pytorch_for_detr_r50(r50, tmp_path):
    out = export_onnx(r50, tmp_path / "detr-r50.onnx", example_size=(96, 128), check=False)
    _dynamic_graph(out)
    diffs = check_onnx(r50, out, sizes=((128, 192), (160, 128)), batches=(1, 2))
    assert set(diffs) == {(1, 128, 192), (2, 160, 128)}
    assert max(d for v in diffs.values() for d in v.values()) <= TOL
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(r50, out)


# ---- a run folder: its card -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r50_run(tmp_path_factory) -> Path:
    """A one-epoch run of a small DETR-R50 (1 encoder, 2 decoder layers, 10 queries, frozen backbone, random init)
    on 6 synthetic images at 64 px, in the demo profile, with the published dropout."""
    root = tmp_path_factory.mktemp("run")
    make_synthetic_coco(root / "coco", n_images=6, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(root / "coco"), split_dir=str(root / "split"), out_dir=str(root / "runs"),
                      n_train=3, n_val=3, min_size=64, max_size=96, train_scales=(64,), epochs=1, precision="fp32",
                      progress=False, num_workers=0)
    cfg = dataclasses.replace(cfg, checkpoint=None, backbone="resnet50", hidden_dim=256, nheads=8,
                              dim_feedforward=256, enc_layers=1, dec_layers=2, num_queries=10, lr_backbone=0.0,
                              dropout=0.1, run_name="r50")
    engine.run_experiment(cfg)
    return cfg.run_dir


@needs_hf
def test_a_run_folder_exports_with_a_card_written_from_it(r50_run, tmp_path):
    out = tmp_path / "hf"
    code, text = _cli(["--run", r50_run, "--to", "hf", "--out", out])
    assert code == 0, text
    config = json.loads((out / "config.json").read_text())
    assert (config["decoder_layers"], config["encoder_layers"], config["num_queries"], config["dropout"]) == \
        (2, 1, 10, 0.1)
    record = runs.load_run(r50_run)
    epoch = torch.load(r50_run / runs.BEST, weights_only=True)["epoch"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "DEMO" in card  # the demo stamp
    ap = 100 * record.metrics.loc[epoch, "val_AP"]
    assert f"**COCO AP {ap:.1f}**" in card and f"at epoch {epoch} of 1" in card  # the engine's COCOeval AP
    low, high = (float(x) for x in card.split("95% interval ")[1].split(",")[0].split(" to "))
    assert low <= round(ap, 1) <= high
    assert "Training seed 42, split seed 42" in card and "| lr | `0.0001` |" in card
    assert f'name.startswith({PUBLISHED_FROZEN!r})' in card  # the freezing snippet, as freeze_as_published does it
    for name in record.per_category_ap.columns:  # one row per class of the per-class AP table
        assert f"| {name} |" in card


def test_the_core_works_without_the_export_packages(tmp_path):
    """With transformers, safetensors, onnx, onnxruntime and onnxscript made unimportable, the package imports,
    loads and runs a model; the export names the extra to install."""
    code = f"""
import sys
for name in ("transformers", "safetensors", "onnx", "onnxruntime", "onnxscript"):
    sys.modules[name] = None  # "import name" now fails as if it were not installed
import torch
import detr_nb_utils.export, detr_nb_utils.predict
from detr_nb_utils.training.inference import model_from_checkpoint
model = model_from_checkpoint({str(ROOT / TINY_CHECKPOINT)!r})[0]
model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
try:
    detr_nb_utils.export.export_onnx(model, {str(tmp_path / "x.onnx")!r})
except ImportError as e:
    print("ImportError:", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ImportError: the ONNX export needs the package 'onnx'" in proc.stdout
    assert "pip install -e '.[export]'" in proc.stdout


@pytest.mark.skipif(HF_UNUSABLE is None, reason="transformers' DETR is usable with this torch (make test-oldest runs it)")
def test_where_transformers_cannot_build_its_detr_the_export_says_why_and_offers_onnx(tmp_path):
    r50 = fill_with_rule(build_detr(num_queries=10, dec_layers=1, enc_layers=1)).eval()
    with pytest.raises(ImportError, match=r"\(2\.6 or newer.*--to onnx"):
        export_hf(r50, LabelMap.coco(), tmp_path / "hf", **SIZES)
    assert not (tmp_path / "hf").exists()
