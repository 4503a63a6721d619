"""Your own data: the label map and its round trip, the config and the dataset layouts, the class-head
surgery in a real model, and a run on a dataset whose ids and names are not COCO's, evaluated in the user's ids."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from detr_nb_utils.analysis.comparison import discover_runs
from detr_nb_utils.analysis.own_data import class_groups, group_ap_table, group_difference, surgery_takeaway
from detr_nb_utils.data.coco import CocoDetection, resolve_dataset_layout
from detr_nb_utils.data.label_map import COCO_NUM_CLASSES, LabelMap
from detr_nb_utils.data.synthetic_own import OWN_CLASSES, make_own_dataset
from detr_nb_utils.data.validate import DatasetError
from detr_nb_utils.models.checkpoint import read_checkpoint
from detr_nb_utils.training import engine, runs
from detr_nb_utils.training.config import TINY_CHECKPOINT, make_config
from detr_nb_utils.training.data_setup import prepare_data

OWN_IDS = [c for c, *_ in OWN_CLASSES]
MATCHED = {"Person": 1, "car": 3, "Bottle": 44}  # the demo's own names that are COCO's, and their COCO rows


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return make_own_dataset(tmp_path_factory.mktemp("own") / "data", n_train=6, n_val=24, seed=0)


def _cfg(own, tmp_path, **kw):
    return make_config("demo", dataset_dir=str(own.root), out_dir=str(tmp_path / "runs"), progress=False, **kw)


def test_label_map_round_trip(tmp_path):
    labels = LabelMap.from_categories([{"id": 40, "name": "b"}, {"id": 7, "name": "a"}, {"id": 103, "name": "c"}])
    assert labels.ids == (7, 40, 103) and labels.indices == (0, 1, 2) and labels.num_classes == 3
    assert labels.to_index([103, 7, 40]).tolist() == [2, 0, 1]
    assert labels.to_id(labels.to_index([103, 7, 40])).tolist() == [103, 7, 40]
    assert LabelMap.load(labels.save(tmp_path / "categories.json")) == labels
    with pytest.raises(KeyError, match="category id 5 is not in the label map"):
        labels.to_index([5])
    coco = LabelMap.coco()
    assert coco.num_classes == COCO_NUM_CLASSES and coco.to_index([90, 1]).tolist() == [90, 1]
    assert coco.index_names[18] == "dog" and LabelMap.load(coco.save(tmp_path / "coco.json")) == coco
    (tmp_path / "bad.json").write_text('{"label_space": "dataset"}')
    with pytest.raises(ValueError, match="bad.json is not a label map"):
        LabelMap.load(tmp_path / "bad.json")


def test_dataset_targets_are_class_indices(own):
    ann, images = own.files("val")
    labels = LabelMap.from_categories(json.loads(ann.read_text())["categories"])
    by_index = CocoDetection(ann, images, labels=labels)
    by_id = CocoDetection(ann, images)
    for i in range(len(by_id)):
        assert labels.to_id(by_index[i][1]["labels"].numpy()).tolist() == by_id[i][1]["labels"].tolist()
        assert all(0 <= v < labels.num_classes for v in by_index[i][1]["labels"].tolist())


def test_config_own_data_fields(own):
    with pytest.raises(ValueError, match="val_annotation_file.*missing"):
        make_config("demo", train_annotation_file="a.json", train_image_dir="a")
    with pytest.raises(ValueError, match="dataset_dir"):
        make_config("demo", dataset_dir="d", train_annotation_file="a.json", train_image_dir="a",
                    val_annotation_file="b.json", val_image_dir="b")
    with pytest.raises(ValueError, match="class_head.*'match', 'reinit'"):
        make_config("demo", class_head="keep")
    assert make_config("demo", dataset_dir="d").own_data and not make_config("demo").own_data


def test_dataset_layouts(tmp_path):
    for split in ("train2017", "val2017"):  # COCO's own
        (tmp_path / "coco" / split).mkdir(parents=True)
    (tmp_path / "coco" / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / "annotations" / f"instances_{split}.json").write_text("{}")
    found = resolve_dataset_layout(tmp_path / "coco")
    assert found["val"] == (tmp_path / "coco/annotations/instances_val2017.json", tmp_path / "coco/val2017")
    for split in ("train", "valid"):  # one folder per split, as annotation tools export COCO
        (tmp_path / "tool" / split).mkdir(parents=True)
        (tmp_path / "tool" / split / "_annotations.coco.json").write_text("{}")
    assert resolve_dataset_layout(tmp_path / "tool")["val"][1] == tmp_path / "tool" / "valid"
    shutil.rmtree(tmp_path / "tool" / "valid")
    with pytest.raises(FileNotFoundError, match="no val set in the dataset folder"):
        resolve_dataset_layout(tmp_path / "tool")


def test_surgery_keeps_the_matching_rows(own, tmp_path):
    cfg = _cfg(own, tmp_path)
    data = prepare_data(cfg)
    assert data.labels.ids == tuple(sorted(OWN_IDS))
    model, criterion, report = engine.build_model(cfg, torch.device("cpu"), data.labels)
    head, bias = model.class_embed.weight.detach(), model.class_embed.bias.detach()
    sd = read_checkpoint(TINY_CHECKPOINT)["model"]
    old, old_bias = sd["class_embed.weight"], sd["class_embed.bias"]
    assert head.shape[0] == len(OWN_CLASSES) + 1 and criterion.num_classes == len(OWN_CLASSES)
    for index, name in enumerate(data.labels.names):
        if name in MATCHED:
            assert torch.equal(head[index], old[MATCHED[name]]) and bias[index] == old_bias[MATCHED[name]]
        else:  # fresh: no row of the checkpoint
            assert not any(torch.equal(head[index], row) for row in old)
    assert torch.equal(head[-1], old[-1]) and bias[-1] == old_bias[-1]  # "no object" carried
    sources = report.class_sources.set_index("name")["from"]
    assert sources[["Person", "car", "Bottle"]].tolist() == ["person", "car", "bottle"]
    assert sources[["tile", "gift box", "traffic cone"]].tolist() == ["fresh"] * 3
    assert "remapped" in report.to_frame().set_index("key").loc["class_embed.weight", "action"]

    fresh, _, report = engine.build_model(_cfg(own, tmp_path, class_head="reinit"), torch.device("cpu"), data.labels)
    assert not any(torch.equal(r, o) for r in fresh.class_embed.weight.detach() for o in old)
    assert (report.class_sources["from"] == "fresh").all()
    with pytest.raises(ValueError, match="needs its label map"):
        engine.build_model(cfg, torch.device("cpu"))


def test_run_reports_ap_in_the_users_ids(own, tmp_path):
    record = engine.run_experiment(_cfg(own, tmp_path, epochs=1, run_name="own"))
    run_dir = record.run_dir
    assert LabelMap.load(run_dir / runs.CATEGORIES) == prepare_data(record.config).labels
    detections = runs.load_detections(run_dir, 0)
    assert set(np.unique(detections["category_id"]).tolist()) <= set(OWN_IDS)
    assert set(record.per_category_ap.columns) == {n for _, n, *_ in OWN_CLASSES}
    epoch0 = record.per_category_ap.loc[0]
    # the surgery keeps what the checkpoint knows: the matched classes are detected before any training
    assert epoch0[list(MATCHED)].min() > 0.4 and epoch0[["tile", "gift box", "traffic cone"]].max() < 0.1
    assert (run_dir / runs.CLASS_HEAD).is_file() and record.split_manifest["dataset"]["val"]["sha256"]
    assert discover_runs(run_dir.parent) == []  # not one of the study's variants: 06 and the report leave it out


def test_bad_dataset_is_refused_before_training(own, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(own.root, broken)
    ann = broken / "annotations" / "instances_train.json"
    d = json.loads(ann.read_text())
    d["annotations"][0]["category_id"] = 999
    ann.write_text(json.dumps(d))
    cfg = make_config("demo", dataset_dir=str(broken), out_dir=str(tmp_path / "runs"), progress=False)
    with pytest.raises(DatasetError, match="unknown category"):
        engine.run_experiment(cfg)
    assert not cfg.run_dir.exists()
    d["annotations"][0]["category_id"] = OWN_IDS[0]
    d["categories"] = d["categories"][:-1]  # the validation set still lists the sixth class
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != OWN_IDS[-1]]
    ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="categories of .* differ"):
        engine.run_experiment(cfg)


def test_surgery_measurement(own, tmp_path):
    cfg = _cfg(own, tmp_path, epochs=1, run_name="m")
    records = {"match": engine.run_experiment(cfg),
               "reinit": engine.run_experiment(dataclasses.replace(cfg, class_head="reinit", run_name="r"))}
    groups = class_groups(records["match"])
    assert groups == {"matched": [7, 12, 40], "fresh": [101, 102, 103]}
    val_gt = CocoDetection(*own.files("val")).coco
    table = group_ap_table(val_gt, records, groups, n_resamples=200)
    for (run, group), row in table.iterrows():  # a group's AP is the mean of its classes' COCO AP
        names = [n for c, n, *_ in OWN_CLASSES if c in groups[group]]
        for when, epoch in (("epoch 0", 0), ("final", 1)):
            assert row[(when, "AP")] == pytest.approx(100 * records[run].per_category_ap.loc[epoch, names].mean())
            assert row[(when, "low")] <= row[(when, "AP")] <= row[(when, "high")]
    diff = group_difference(val_gt, records["match"], records["reinit"], groups["matched"], n_resamples=200)
    want = table.loc[("match", "matched"), ("final", "AP")] - table.loc[("reinit", "matched"), ("final", "AP")]
    assert diff["AP"] == pytest.approx(want) and diff["low"] <= diff["AP"] <= diff["high"]
    text = surgery_takeaway(table, {"matched": diff, "fresh": diff}, 24, 1)
    assert f"{table.loc[('match', 'matched'), ('epoch 0', 'AP')]:.1f} AP" in text and "24 validation images" in text
