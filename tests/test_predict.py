"""Prediction: ``python -m detr_nb_utils.predict`` and its API (:mod:`detr_nb_utils.training.inference`,
:mod:`detr_nb_utils.training.prediction_files`), with the committed tiny DETR on a few synthetic images (seconds on a
CPU): no one image stops the others, damaged weights are named, and an output folder never mixes two calls."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from bad_images import NON_UTF8_NAME, huge_header_jpeg, png16, truncated_png
from damaged_files import flip_entry_bytes

from detr_nb_utils.data.coco import build_dataset, collate_fn
from detr_nb_utils.data.label_map import LabelMap
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.models.checkpoint import read_checkpoint
from detr_nb_utils.models.detr import build_detr
from detr_nb_utils.models.postprocess import postprocess
from detr_nb_utils.predict import collect_images, main
from detr_nb_utils.training import runs
from detr_nb_utils.training.config import PROFILES, TINY_CHECKPOINT, make_config
from detr_nb_utils.data.images import read_image
from detr_nb_utils.training.inference import model_from_checkpoint, model_from_run, predict_images
from detr_nb_utils.training.prediction_files import OutputFolderError, output_names, write_outputs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / TINY_CHECKPOINT
DEMO_SIZES = {"min_size": PROFILES["demo"]["min_size"], "max_size": PROFILES["demo"]["max_size"]}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """4 synthetic images (the 3rd and 4th without objects) and their annotations."""
    return make_synthetic_coco(tmp_path_factory.mktemp("predict") / "syn", n_images=4, seed=0)


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*map(str, argv), "--no-progress"])
    return code, out.getvalue() + err.getvalue()


def _load_results(out: Path) -> tuple[COCO, COCO]:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(out / "images.json"))
        return gt, gt.loadRes(str(out / "results.json"))


def test_cli_names_and_skips_a_corrupt_image_and_writes_the_rest(syn, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"these bytes are not an image")
    out = tmp_path / "out"
    code, text = _run(["--checkpoint", TINY, syn.images, bad, "--threshold", "0.5", "--out", out])
    assert code == 1
    assert str(bad) in text and "4 images predicted" in text and "1 failed" in text
    inputs = sorted(syn.images.glob("*.jpg"))
    assert sorted(p.name for p in out.glob("*.jpg")) == [p.name for p in inputs]  # one drawn image per good one
    for p in inputs:
        assert read_image(out / p.name).shape == read_image(p).shape
    gt, res = _load_results(out)
    assert len(gt.getImgIds()) == 4 and gt.dataset["annotations"] == []
    assert len(res.getAnnIds()) > 0
    assert {img["file_name"] for img in gt.dataset["images"]} == {p.name for p in inputs}


def test_cli_exit_status(syn, tmp_path):
    code, text = _run(["--checkpoint", TINY, *sorted(syn.images.glob("*.jpg"))[:2], "--out", tmp_path / "a"])
    assert code == 0 and "2 images predicted" in text and "0 failed" in text
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    code, text = _run(["--checkpoint", TINY, bad, tmp_path / "missing.jpg", "--out", tmp_path / "b"])
    assert code == 2 and "no such file" in text and str(bad) in text and not (tmp_path / "b").exists()
    assert _run(["--checkpoint", TINY, syn.images, "--threshold", "1.5"])[0] == 2
    assert _run(["--checkpoint", tmp_path / "nope.pth", syn.images])[0] == 2
    assert _run(["--run", tmp_path / "no_run", syn.images])[0] == 2


def test_detections_are_mostly_the_right_shapes(syn, tmp_path):
    """The tiny DETR (AP ~0.8 in this world) finds the objects: at threshold 0.5 most detections on an annotated
    image name one of its annotated categories, and each annotated image has at least one such detection."""
    out = tmp_path / "out"
    assert _run(["--checkpoint", TINY, syn.images, "--threshold", "0.5", "--out", out])[0] == 0
    truth = json.loads(syn.annotations.read_text())
    annotated: dict[str, set[int]] = {}
    for img in truth["images"]:
        annotated[img["file_name"]] = {a["category_id"] for a in truth["annotations"]
                                       if a["image_id"] == img["id"] and not a.get("iscrowd", 0)}
    names = {img["id"]: img["file_name"] for img in json.loads((out / "images.json").read_text())["images"]}
    results = json.loads((out / "results.json").read_text())
    scored = [r for r in results if annotated[names[r["image_id"]]]]
    right = [r for r in scored if r["category_id"] in annotated[names[r["image_id"]]]]
    assert scored and len(right) / len(scored) > 0.5
    hit = {names[r["image_id"]] for r in right}
    assert hit == {name for name, cats in annotated.items() if cats}


def test_threshold_filters(syn, tmp_path):
    counts = {}
    for t in (0.3, 0.7, 0.95):
        out = tmp_path / f"t{t}"
        assert _run(["--checkpoint", TINY, syn.images, "--threshold", t, "--out", out])[0] == 0
        results = json.loads((out / "results.json").read_text())
        assert all(r["score"] >= t for r in results)
        counts[t] = len(results)
    assert counts[0.3] >= counts[0.7] >= counts[0.95] and counts[0.3] > counts[0.95]


def _dataset_run(tmp_path: Path, with_best: bool = True) -> Path:
    """A run folder in a dataset's label space: ids 7 ("widget") and 3 ("car") in that (unsorted) order, so index 0
    is id 7 and index 1 is id 3. Its head is the tiny DETR's rows of person (red rectangles) and car (blue
    ellipses), so it predicts both."""
    cfg = make_config("demo", run_name="mine", out_dir=str(tmp_path / "runs"))
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True)
    cfg.to_json(run_dir / runs.CONFIG)
    LabelMap("dataset", (7, 3), ("widget", "car")).save(run_dir / runs.CATEGORIES)
    model = build_detr(**{**cfg.arch, "num_classes": 2}, num_queries=cfg.num_queries, dec_layers=cfg.dec_layers)
    state = read_checkpoint(TINY)["model"]
    rows = torch.tensor([1, 3, 91])  # person -> index 0, car -> index 1, "no object"
    state = {**state, "class_embed.weight": state["class_embed.weight"][rows],
             "class_embed.bias": state["class_embed.bias"][rows]}
    model.load_state_dict(state, strict=True)
    torch.save({"model": model.state_dict()}, run_dir / (runs.BEST if with_best else runs.LAST))
    return run_dir


def test_cli_on_a_run_folder_writes_the_datasets_category_ids(syn, tmp_path):
    run_dir = _dataset_run(tmp_path)
    out = tmp_path / "out"
    code, text = _run(["--run", run_dir, syn.images, "--threshold", "0.3", "--out", out])
    assert code == 0, text
    gt, res = _load_results(out)
    assert {c["id"]: c["name"] for c in gt.dataset["categories"]} == {7: "widget", 3: "car"}
    ids = {a["category_id"] for a in res.dataset["annotations"]}
    assert ids == {7, 3}  # ids, never the indices 0 and 1


def test_model_from_run(tmp_path):
    run_dir = _dataset_run(tmp_path, with_best=False)
    with pytest.warns(UserWarning, match=runs.LAST):
        model, labels, cfg = model_from_run(run_dir)
    assert not model.training and model.num_classes == 2 and labels.index_names == {0: "widget", 1: "car"}
    assert cfg.min_size == DEMO_SIZES["min_size"]
    (run_dir / runs.LAST).unlink()
    with pytest.raises(FileNotFoundError, match=f"{runs.BEST}.*{runs.LAST}"):
        model_from_run(run_dir)
    (run_dir / runs.CATEGORIES).unlink()  # every run folder has its label map: without it, not a run folder
    with pytest.raises(FileNotFoundError, match=f"holds no {runs.CATEGORIES}"):
        model_from_run(run_dir)
    (run_dir / runs.CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match=runs.CONFIG):
        model_from_run(run_dir)


def test_model_from_checkpoint(tmp_path):
    model, labels, sizes = model_from_checkpoint(TINY)
    assert labels.label_space == "coco" and sizes == DEMO_SIZES and not model.training
    assert model.dec_layers == 6 and model.num_queries == 100
    cut = tmp_path / "cut.pth"  # a cut tiny checkpoint: the layers and queries are read off the weights
    entries = read_checkpoint(TINY)
    state = {k: v for k, v in entries["model"].items() if not k.startswith("transformer.decoder.layers.5.")}
    torch.save({"model": {**state, "query_embed.weight": state["query_embed.weight"][:50]},
                "arch": entries["arch"]}, cut)
    model, _, _ = model_from_checkpoint(cut)
    assert model.dec_layers == 5 and model.num_queries == 50
    run_best = tmp_path / "run_best.pth"  # a run's checkpoint: the architecture and sizes from its config entry
    cfg = make_config("demo", min_size=128, max_size=200)
    torch.save({"model": state, "epoch": 1, "config": cfg.to_dict()}, run_best)
    model, _, sizes = model_from_checkpoint(run_best)
    assert sizes == {"min_size": 128, "max_size": 200} and model.dec_layers == 5
    two = tmp_path / "two.pth"
    torch.save({"model": {**state, "class_embed.weight": state["class_embed.weight"][:3],
                          "class_embed.bias": state["class_embed.bias"][:3]}}, two)
    with pytest.raises(ValueError, match="--run"):
        model_from_checkpoint(two)


def test_model_from_an_official_layout_checkpoint(syn, tmp_path):
    """A file laid out like ``detr-r50-e632da11.pth`` (no ``arch`` entry) is the published DETR-R50, at the published
    sizes; a cut one (2 decoder layers, 10 queries) to keep the test light."""
    path = tmp_path / "detr-r50.pth"
    torch.manual_seed(0)
    torch.save({"model": build_detr(dec_layers=2, num_queries=10).state_dict()}, path)
    model, labels, sizes = model_from_checkpoint(path)
    assert sizes == {"min_size": 800, "max_size": 1333} and labels.num_classes == 91
    assert model.dec_layers == 2 and model.num_queries == 10 and type(model.backbone[0]).__name__ == "Backbone"
    result = predict_images(model, labels, [sorted(syn.images.glob("*.jpg"))[0]], min_size=64, max_size=100,
                            threshold=0.0, progress=False)
    assert len(result.images) == 1 and len(result.images[0]) == 10


def test_predict_images_api(syn, tmp_path):
    model, labels, sizes = model_from_checkpoint(TINY)
    paths = sorted(syn.images.glob("*.jpg"))
    bad = tmp_path / "empty.jpg"
    bad.touch()
    result = predict_images(model, labels, [paths[0], bad, *paths[1:]], threshold=0.5, batch_size=3,
                            progress=False, **sizes)
    assert [p.path for p in result.images] == paths and result.failed == [(bad, "empty file")]
    one_by_one = predict_images(model, labels, paths, threshold=0.5, batch_size=1, progress=False, **sizes)
    for a, b in zip(result.images, one_by_one.images):  # padding in a batch of same-size images changes nothing
        assert a.size == (160, 224) and list(a.category_ids) == list(b.category_ids)
        assert a.boxes.shape == (len(a), 4) and (a.scores[:-1] >= a.scores[1:]).all()
        assert a.names == [labels.index_names[int(i)] for i in a.indices]
    assert "4 images predicted" in result.summary() and "1 failed:" in result.summary()
    with pytest.raises(ValueError, match="threshold"):
        predict_images(model, labels, paths, threshold=2.0, **sizes)


def test_predictions_are_the_evaluations(syn):
    """The same pixels, model and post-processing as the evaluation (``CocoDetection`` + ``collate_fn``): with no
    threshold, every query's score, class and box is the evaluation's, bit for bit (sorted by score)."""
    model, labels, sizes = model_from_checkpoint(TINY)
    ds = build_dataset(syn.annotations, syn.images, "val", val_size=sizes["min_size"], max_size=sizes["max_size"])
    images, mask, targets = collate_fn([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        ref = postprocess(model(images, mask), torch.stack([t["orig_size"] for t in targets]))
    result = predict_images(model, labels, [ds.image_path(i) for i in range(len(ds))], threshold=0.0,
                            batch_size=len(ds), progress=False, **sizes)
    for r, p in zip(ref, result.images):
        order = torch.from_numpy(np.argsort(-r["scores"].numpy(), kind="stable"))
        assert torch.equal(r["scores"][order], torch.from_numpy(p.scores))
        assert torch.equal(r["labels"][order], torch.from_numpy(p.indices))
        assert torch.equal(r["boxes"][order], torch.from_numpy(p.boxes))


def test_outputs_of_inputs_sharing_a_stem(syn, tmp_path):
    assert output_names(["a/x.jpg", "b/x.png", "c/X.jpeg", "x_2.jpg"]) == ["x.jpg", "x_2.jpg", "X_3.jpg", "x_2_2.jpg"]
    first = sorted(syn.images.glob("*.jpg"))[0]
    other = tmp_path / "elsewhere" / first.name
    other.parent.mkdir()
    shutil.copy(first, other)
    model, labels, sizes = model_from_checkpoint(TINY)
    result = predict_images(model, labels, [first, other], progress=False, **sizes)
    write_outputs(result, tmp_path / "out", image_ids=[42, 7])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == [first.name, f"{first.stem}_2.jpg"]
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert [i["id"] for i in images] == [42, 7]
    assert {r["image_id"] for r in json.loads((tmp_path / "out" / "results.json").read_text())} <= {42, 7}


def test_collect_images_expands_folders(syn, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    shutil.copy(sorted(syn.images.glob("*.jpg"))[0], tmp_path / "b.PNG")
    found = collect_images([tmp_path, tmp_path / "b.PNG", tmp_path / "missing.jpg"])
    assert found == [tmp_path / "b.PNG", tmp_path / "missing.jpg"]


def test_module_runs_as_a_script(syn, tmp_path):
    done = subprocess.run([sys.executable, "-m", "detr_nb_utils.predict", "--checkpoint", str(TINY),
                           str(sorted(syn.images.glob("*.jpg"))[0]), "--out", str(tmp_path / "o"), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 image predicted" in done.stdout and (tmp_path / "o" / "results.json").is_file()


# ---- no one image stops the others, damaged weights are named, one call per output folder ------------------------


def _cli(argv: list) -> subprocess.CompletedProcess:
    """The command in its own process: a crash (a segmentation fault) shows as a return code, not a lost test run."""
    return subprocess.run([sys.executable, "-m", "detr_nb_utils.predict", *map(str, argv), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_truncated_png_is_named_and_skipped(syn, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(syn.images, folder)
    truncated_png(folder / "cut.png")
    done = _cli(["--checkpoint", TINY, folder, "--out", tmp_path / "out"])
    assert done.returncode == 1, done.stderr  # not -11: the process survives the file
    assert "4 images predicted" in done.stdout and "cut.png: does not decode (OSError: image file is truncated" \
        in done.stdout
    assert len(json.loads((tmp_path / "out" / "images.json").read_text())["images"]) == 4


def test_a_header_claiming_30000_by_30000_pixels_is_refused_quickly(syn, tmp_path, monkeypatch):
    huge = huge_header_jpeg(tmp_path / "huge.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # whatever PIL was told, the reader's own limit holds
    code, text = _run(["--checkpoint", TINY, huge, sorted(syn.images.glob("*.jpg"))[0], "--out", tmp_path / "out"])
    assert code == 1 and "1 image predicted" in text and "1 failed" in text
    assert f"{huge}: its header says 30000 x 30000 pixels" in text


def test_a_16_bit_png_is_predicted_and_an_earlier_calls_outputs_are_replaced(syn, tmp_path):
    first, second = sorted(syn.images.glob("*.jpg"))[:2]
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("mine")
    assert _run(["--checkpoint", TINY, first, "--out", out])[0] == 0  # an earlier call, on another image
    (out / "notes.txt").write_text("mine")  # a file of the user's in the folder
    deep = png16(tmp_path / "deep.png", 96, 64)
    code, text = _run(["--checkpoint", TINY, deep, second, "--out", out])
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == sorted(["deep.jpg", second.name, "images.json", "results.json",
                                                            "notes.txt"])
    gt, res = _load_results(out)
    assert [im["file_name"] for im in gt.dataset["images"]] == ["deep.png", second.name]
    assert {a["image_id"] for a in res.dataset["annotations"]} <= set(gt.getImgIds())
    assert (out / "notes.txt").read_text() == "mine"


def test_a_file_the_command_did_not_write_is_never_overwritten(syn, tmp_path):
    image = sorted(syn.images.glob("*.jpg"))[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / image.name).write_bytes(b"my own picture")
    code, text = _run(["--checkpoint", TINY, image, "--out", out])
    assert code == 2 and f"error: {out / image.name} exists and was not written by an earlier prediction" in text
    assert (out / image.name).read_bytes() == b"my own picture" and sorted(out.iterdir()) == [out / image.name]
    (out / image.name).unlink()
    (out / "results.json").write_text("[]")  # somebody else's results
    code, text = _run(["--checkpoint", TINY, image, "--out", out])
    assert code == 2 and "results.json exists but" in text and (out / "results.json").read_text() == "[]"
    folder = tmp_path / "photos"
    shutil.copytree(syn.images, folder)
    code, text = _run(["--checkpoint", TINY, folder, "--out", folder])  # the drawn images would replace the inputs
    assert code == 2 and "is one of the input images" in text
    assert sorted(p.read_bytes() for p in folder.iterdir()) == sorted(p.read_bytes() for p in syn.images.iterdir())


def test_output_folder_api_refuses_before_changing_anything(syn, tmp_path):
    model, labels, sizes = model_from_checkpoint(TINY)
    result = predict_images(model, labels, sorted(syn.images.glob("*.jpg"))[:2], progress=False, **sizes)
    out = tmp_path / "out"
    write_outputs(result, out)
    (out / "images.json").write_text('{"images": []}')  # edited by hand: no longer recognisably ours
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputFolderError, match="was not written by an earlier prediction"):
        write_outputs(result, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("source", ["--checkpoint", "--run"])
def test_weights_with_16_flipped_bytes_are_named_not_used(syn, tmp_path, source):
    if source == "--checkpoint":
        weights = tmp_path / "tiny.pth"
        shutil.copy(TINY, weights)
        target = weights
    else:
        target = _dataset_run(tmp_path)
        weights = target / runs.BEST
    flip_entry_bytes(weights, 16)
    out = tmp_path / "out"
    code, text = _run([source, target, syn.images, "--out", out])
    assert code == 2 and f"error: checkpoint {weights} is damaged: its entry" in text and "CRC-32" in text
    assert "Traceback" not in text and not out.exists()


def test_a_non_utf8_image_name_is_predicted_and_printed(syn, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted(syn.images.glob("*.jpg"))[0], folder / NON_UTF8_NAME)
    (folder / os.fsdecode(b"bro\xebn.jpg")).write_bytes(b"no picture")
    done = _cli(["--checkpoint", TINY, folder, "--out", tmp_path / "out"])
    assert done.returncode == 1, done.stderr
    assert "1 image predicted" in done.stdout and "bro\\xebn.jpg: not an image file" in done.stdout
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert [im["file_name"] for im in images] == [NON_UTF8_NAME]
