"""The fine-tuning engine on a tiny DETR and a few synthetic images: it learns, it resumes exactly, it stops on a
non-finite loss without touching the last good checkpoint, a run folder reads back, a resume never changes the
precision a run computes in, and a damaged last checkpoint is named with the ways forward."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from detr_nb_utils.analysis.bootstrap import MatchedDetections, ap_interval
from detr_nb_utils.data.coco import build_dataset, collate_fn
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.models.checkpoint import CheckpointError, load_pretrained
from detr_nb_utils.models.detr import build_detr
from detr_nb_utils.models.fast import model_forward
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import RunConfig, make_config
from detr_nb_utils.training.data_setup import make_dataset, prepare_data
from detr_nb_utils.training.runtime import seed_everything
from detr_nb_utils.training.inference import model_from_run
from damaged_files import flip_entry_bytes, truncate

# a DETR small enough for CI: the demo profile's tiny backbone, frozen (lr_backbone=0, as the published
# train_backbone = lr_backbone > 0), and a smaller transformer, from random weights
TINY = dict(checkpoint=None, enc_layers=1, dec_layers=2, hidden_dim=64, nheads=4, dim_feedforward=128, num_queries=10,
            lr_backbone=0.0)
TIMES = ("train_time_s", "eval_time_s", "wall_time_s")


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("engine")
    make_synthetic_coco(root / "coco", n_images=8, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(root / "coco"), split_dir=str(root / "split"), out_dir=str(root / "runs"),
                      n_train=4, n_val=3, min_size=64, max_size=96, train_scales=(64,), epochs=2, precision="fp32",
                      progress=False, num_workers=0)
    return dataclasses.replace(cfg, **TINY)


def test_tiny_model_overfits_two_images(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, lr=1e-3, dropout=0.0)
    data = prepare_data(cfg)
    images = build_dataset(data.train_file, data.image_dir, "val", val_size=64, max_size=96)  # no augmentation
    two = torch.utils.data.Subset(images, [i for i in range(len(images)) if len(images[i][1]["labels"])][:2])
    loader = DataLoader(two, batch_size=2, collate_fn=collate_fn)
    seed_everything(0)
    model, criterion, _ = engine.build_model(cfg, torch.device("cpu"))
    optimizer = engine.build_optimizer(model, cfg)
    losses = [engine.train_one_epoch(model, criterion, loader, optimizer, "cpu", e, cfg)["loss"] for e in range(40)]
    assert losses[-1] < 0.5 * losses[0], f"loss went {losses[0]:.2f} -> {losses[-1]:.2f}"


def test_bf16_fast_mode_trains_with_fp32_outputs(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, precision="bf16", channels_last=True)
    data = prepare_data(cfg)
    dataset = make_dataset(cfg, data, "train")
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_fn, drop_last=True)
    model, criterion, _ = engine.build_model(cfg, torch.device("cpu"))
    images, mask, _ = next(iter(loader))
    outputs = model_forward(model, images, mask, torch.bfloat16, channels_last=True)
    assert outputs["pred_logits"].dtype == outputs["aux_outputs"][0]["pred_boxes"].dtype == torch.float32
    before = model.class_embed.weight.detach().clone()
    metrics = engine.train_one_epoch(model, criterion, loader, engine.build_optimizer(model, cfg), "cpu", 1, cfg)
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert not torch.equal(before, model.class_embed.weight)


def test_optimizer_groups_follow_the_published_split(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, lr_backbone=1e-5, backbone="resnet50")  # the published backbone's groups
    model, _, _ = engine.build_model(cfg, torch.device("cpu"))
    groups = engine.build_optimizer(model, cfg).param_groups
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    by_id = {id(p): n for n, p in trainable.items()}
    assert [g["lr"] for g in groups] == [cfg.lr, cfg.lr_backbone]
    assert all(not by_id[id(p)].startswith("backbone") for p in groups[0]["params"])
    assert all(by_id[id(p)].startswith("backbone.0.body.layer") for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # frozen stem and layer1 left out
    frozen, _, _ = engine.build_model(dataclasses.replace(cfg, lr_backbone=0.0), torch.device("cpu"))
    assert engine.build_optimizer(frozen, cfg).param_groups[1]["params"] == []


def _metrics(run_dir):
    lines = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMES} for line in lines]


def test_interrupted_run_resumes_to_the_same_numbers_and_nan_keeps_last_checkpoint(tiny_cfg, monkeypatch):
    straight = engine.run_experiment(dataclasses.replace(tiny_cfg, run_name="straight"))
    assert straight.complete and list(straight.metrics.index) == [0, 1, 2]
    assert [m[runs.PRECISION_FIELD] for m in _metrics(straight.run_dir)] == ["fp32"] * 3

    first = dataclasses.replace(tiny_cfg, run_name="resumed", epochs=1)
    engine.run_experiment(first)
    last = first.run_dir / runs.LAST
    saved = last.read_bytes()
    real_total = engine.weighted_total
    monkeypatch.setattr(engine, "weighted_total", lambda d, w: real_total(d, w) * float("nan"))
    with pytest.raises(engine.NonFiniteLossError, match="epoch 2, step 0"):
        engine.run_experiment(dataclasses.replace(first, epochs=2))
    assert last.read_bytes() == saved and [m["epoch"] for m in _metrics(first.run_dir)] == [0, 1]

    monkeypatch.undo()
    resumed = engine.run_experiment(dataclasses.replace(first, epochs=2))
    # the same numbers; the resumed run's epoch 1 was once its final epoch, so it also holds every layer's AP
    both = [{k: v for k, v in a.items() if k in b} for a, b in zip(_metrics(resumed.run_dir), _metrics(straight.run_dir))]
    assert both == _metrics(straight.run_dir)
    assert runs.detection_epochs(resumed.run_dir) == runs.detection_epochs(straight.run_dir) == [0, 1, 2]
    for epoch in (0, 1, 2):
        a, b = runs.load_detections(straight.run_dir, epoch), runs.load_detections(resumed.run_dir, epoch)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    a, b = runs.load_last(straight.run_dir), runs.load_last(resumed.run_dir)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_run_folder_reads_back_and_refuses_another_config(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, run_name="readback", epochs=1)
    record = engine.run_experiment(cfg)
    names = {p.name for p in cfg.run_dir.iterdir()}
    events = {n for n in names if n.startswith("events.out.tfevents.")}  # TensorBoard's
    assert len(events) == 1
    assert names - events == {runs.CONFIG, runs.MANIFEST, runs.METRICS, runs.HISTORY, runs.LAST, runs.BEST,
                              runs.DETECTIONS, runs.ENVIRONMENT, runs.CATEGORIES}  # random weights: no class_head.csv
    loaded = runs.load_run(cfg.run_dir)
    (session,) = loaded.environment  # one start, on this machine, from no finished epoch
    assert session["from_epoch"] is None and session["device"] == "cpu" and session["torch"] == torch.__version__
    engine.run_experiment(dataclasses.replace(cfg, epochs=2))  # extended: a second session, from epoch 1
    engine.run_experiment(dataclasses.replace(cfg, epochs=2))  # finished: read back, no session recorded
    assert [e["from_epoch"] for e in runs.load_run(cfg.run_dir).environment] == [None, 1]
    assert len(list(cfg.run_dir.glob("events.out.tfevents.*"))) == 2  # the extension appended; reading back wrote none
    with pytest.raises(FileNotFoundError, match=r"keeps every decoder layer's detections for epochs \[0, 1, 2\]"):
        runs.load_layer_detections(cfg.run_dir, 5)
    assert loaded.config == cfg and loaded.complete and loaded.best_epoch_ap == record.best_epoch_ap
    assert {"val_AP", "val_AP_layer_0", "val_loss_total", "val_loss_final", "train_loss"} <= set(loaded.metrics)
    assert list(loaded.per_category_ap.index) == [0, 1]
    dets = runs.load_detections(cfg.run_dir, 1)  # the final layer's detections, one per query and image
    n_images = int(loaded.metrics.loc[1, "val_num_images"])
    assert len(dets["score"]) == n_images * cfg.num_queries and len(np.unique(dets["image_id"])) == n_images
    assert dets["bbox"].shape == (len(dets["score"]), 4) and dets["category_id"].dtype == np.int64
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(Path(cfg.split_dir) / "val.json"))
    # the saved detections reproduce the logged AP
    matched = MatchedDetections(gt, dets, sorted(np.unique(dets["image_id"]).tolist()))
    point = ap_interval(matched, n_resamples=20)["AP"]["point"]
    assert point == pytest.approx(loaded.metrics.loc[1, "val_AP"], abs=1e-4)
    # every decoder layer's detections at the first and the last epoch; each layer's reproduces its logged AP
    layers = runs.load_layer_detections(cfg.run_dir, 1)
    assert len(layers) == cfg.dec_layers and all(np.array_equal(layers[-1][k], dets[k]) for k in dets)
    first = ap_interval(MatchedDetections(gt, layers[0], matched.img_ids), n_resamples=20)["AP"]["point"]
    assert first == pytest.approx(loaded.metrics.loc[1, "val_AP_layer_0"], abs=1e-4)
    assert len(runs.load_layer_detections(cfg.run_dir, 0)) == cfg.dec_layers
    best = torch.load(cfg.run_dir / runs.BEST, weights_only=True)
    assert best["epoch"] == loaded.best_epoch_ap
    with pytest.raises(runs.RunConfigMismatch, match=r"lr: 0\.0001 in the folder, 0\.0002 now"):
        engine.run_experiment(dataclasses.replace(cfg, lr=2e-4))


def test_channels_last_follows_the_precision_unless_set(tiny_cfg, monkeypatch):
    calls = []
    real = engine.model_forward
    monkeypatch.setattr(engine, "model_forward", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    conv = lambda m: m.backbone[0].body.conv1.weight  # noqa: E731
    cl = torch.channels_last
    for precision, asked, expected in (("bf16", None, True), ("fp32", None, False), ("bf16", False, False),
                                       ("fp32", True, True)):
        cfg = dataclasses.replace(tiny_cfg, precision=precision, channels_last=asked)
        model, criterion, _ = engine.build_model(cfg, torch.device("cpu"))
        assert conv(model).is_contiguous(memory_format=cl) == expected, (precision, asked)
        data = prepare_data(cfg)
        dataset = build_dataset(data.train_file, data.image_dir, "val", val_size=64, max_size=96)
        loader = DataLoader(torch.utils.data.Subset(dataset, [0, 1]), batch_size=2, collate_fn=collate_fn)
        calls.clear()
        engine.train_one_epoch(model, criterion, loader, engine.build_optimizer(model, cfg), "cpu", 1, cfg)
        assert calls == [expected], (precision, asked)  # the batch goes in the layout the weights are in


# ---- resuming: one precision per run, and a damaged last checkpoint named ------------------------------------


@pytest.fixture(scope="module")
def one_epoch(tiny_cfg) -> RunConfig:
    """A finished 1-epoch fp32 run folder; tests resume copies of it (:func:`_copy_run`)."""
    cfg = dataclasses.replace(tiny_cfg, run_name="one_epoch", epochs=1)
    engine.run_experiment(cfg)
    return cfg


def _copy_run(cfg: RunConfig, name: str, **changes) -> RunConfig:
    """A copy of ``cfg``'s run folder as run ``name`` (its config.json rewritten to match), and its config."""
    new = dataclasses.replace(cfg, run_name=name, **changes)
    shutil.copytree(cfg.run_dir, new.run_dir)
    new.to_json(new.run_dir / runs.CONFIG)
    return new


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_auto_resolving_to_another_precision_on_resume_is_refused(one_epoch, monkeypatch):
    real = engine.resolve_amp_dtype

    def auto_gives(dtype):  # what "auto" resolves to on the machine of the moment
        monkeypatch.setattr(engine, "resolve_amp_dtype", lambda p, d: dtype if p == "auto" else real(p, d))

    auto_gives(None)
    cfg = dataclasses.replace(one_epoch, precision="auto", run_name="auto_fp32")
    engine.run_experiment(cfg)
    assert [m[runs.PRECISION_FIELD] for m in _metrics(cfg.run_dir)] == ["fp32", "fp32"]
    before = _snapshot(cfg.run_dir)

    auto_gives(torch.bfloat16)  # another machine: auto would now compute in bf16
    with pytest.raises(runs.PrecisionMismatch) as err:
        engine.run_experiment(dataclasses.replace(cfg, epochs=2))
    msg = str(err.value)
    assert str(cfg.run_dir) in msg and "computed in fp32" in msg and "would compute in bf16" in msg
    assert "precision='auto' on cpu" in msg and f"delete {cfg.run_dir}" in msg and runs.BEST in msg
    assert _snapshot(cfg.run_dir) == before  # a refused resume leaves the folder as it was
    record = engine.run_experiment(cfg)  # a finished run is only read back: nothing computed, nothing mixed
    assert record.complete and _snapshot(cfg.run_dir)[runs.METRICS] == before[runs.METRICS]



@pytest.mark.parametrize("damage, what", [
    ("truncate", r"it is truncated: it ends after [\d,]+ bytes, before the zip directory"),
    ("garble", r"its entry \S+ fails its CRC-32 check"),
    ("empty", r"it is empty"),
])
def test_a_damaged_last_checkpoint_is_named_with_the_ways_forward(one_epoch, damage, what):
    cfg = _copy_run(one_epoch, f"damaged_{damage}")
    last = cfg.run_dir / runs.LAST
    if damage == "truncate":
        truncate(last)
    elif damage == "garble":
        flip_entry_bytes(last, 64)
    else:
        last.write_bytes(b"")
    before = _snapshot(cfg.run_dir)
    with pytest.raises(runs.DamagedRunFolder, match=rf"{last} is damaged: {what}") as err:
        engine.run_experiment(dataclasses.replace(cfg, epochs=2))
    msg = str(err.value)
    assert f"Delete {cfg.run_dir} and run again to start the run afresh" in msg
    assert f"checkpoint='{cfg.run_dir / runs.BEST}' with a new run_name" in msg
    assert _snapshot(cfg.run_dir) == before


def test_the_best_checkpoint_is_recommended_only_when_it_reads(one_epoch):
    cfg = _copy_run(one_epoch, "both_damaged")
    truncate(cfg.run_dir / runs.LAST)
    flip_entry_bytes(cfg.run_dir / runs.BEST)
    with pytest.raises(runs.DamagedRunFolder) as err:
        engine.run_experiment(dataclasses.replace(cfg, epochs=2))
    msg = str(err.value)
    assert f"{cfg.run_dir / runs.BEST}, its best epoch's weights, is damaged too" in msg and "CRC-32" in msg
    assert "checkpoint=" not in msg  # the damaged file is not offered as a way forward


def test_a_damaged_best_checkpoint_is_named_when_the_run_is_extended_predicted_or_started_from(one_epoch):
    cfg = _copy_run(one_epoch, "best_damaged")
    best = cfg.run_dir / runs.BEST
    flip_entry_bytes(best)  # 16 bytes of a tensor: torch.load alone reads them without complaint
    assert torch.load(best, weights_only=True)["epoch"] == 1
    before = _snapshot(cfg.run_dir)
    with pytest.raises(runs.DamagedRunFolder, match=rf"{best} is damaged: its entry \S+ fails its CRC-32 check.*"
                                                    rf"delete {cfg.run_dir}"):
        engine.run_experiment(dataclasses.replace(cfg, epochs=2))  # extending the run
    assert _snapshot(cfg.run_dir) == before
    with pytest.raises(CheckpointError, match=rf"checkpoint {best} is damaged: its entry \S+ fails its CRC-32"):
        model_from_run(cfg.run_dir)  # predicting with it
    model = build_detr(**cfg.arch, num_queries=cfg.num_queries, dec_layers=cfg.dec_layers)
    with pytest.raises(CheckpointError, match=rf"checkpoint {best} is damaged"):
        load_pretrained(model, best)  # starting a new run from it (the engine's load), as the damaged-run advice says


def test_each_epoch_prints_one_line_with_ap_in_points(tiny_cfg, capsys):
    """The line a headless log shows per epoch gives AP in points, as every table does."""
    record = engine.run_experiment(dataclasses.replace(tiny_cfg, run_name="log_line", epochs=1))
    out = capsys.readouterr().out
    for epoch in (0, 1):
        ap = 100 * record.metrics.loc[epoch, "val_AP"]
        assert f"epoch {epoch}: " in out and f"val AP {ap:.1f} points" in out
    assert "the checkpoint, before training" in out and "train loss" in out
