"""The demo world as the demo uses it: the committed tiny DETR is the recorded file and still scores its recorded AP
on the demo's validation split; the demo's pool has what a mini-COCO needs (real category ids, crowd regions, empty
images, crowded images); a changed or missing checkpoint is refused with the way to restore it."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from detr_nb_utils.data.synthetic import CROWDED_SHAPES, SHAPES, make_synthetic_coco
from detr_nb_utils.models.detr import TINY_DETR
from detr_nb_utils.training.config import TINY_CHECKPOINT, make_config
from detr_nb_utils.training.data_setup import check_committed_checkpoint
from detr_nb_utils.training.pretrain import demo_val_ap

RECORD = Path(TINY_CHECKPOINT).with_suffix(".json")


def test_the_committed_checkpoint_is_the_recorded_one():
    summary, path = json.loads(RECORD.read_text()), Path(TINY_CHECKPOINT)
    assert path.stat().st_size == summary["bytes"] <= 5 * 2**20
    check_committed_checkpoint(path)  # its SHA-256 is the recorded one
    assert not summary["stopped_by_time"] and summary["steps"] == summary["config"]["steps"]
    assert summary["AP"] >= 0.5 and summary["demo_val"]["AP"] >= 0.5  # the demo's floor; pre-training aimed at 0.6
    obj = torch.load(path, weights_only=True)
    assert obj["arch"] == {**TINY_DETR, "num_classes": 91, "num_queries": 100, "dec_layers": 6}
    curve = path.with_suffix(".csv").read_text().splitlines()
    assert curve[0].startswith("step,") and curve[-1].startswith(f"{summary['steps']},")


def test_the_committed_checkpoint_scores_its_recorded_ap_on_the_demo_split(tmp_path):
    """The end-to-end check of everything between the file and the number: data, transforms, model, post-processing
    and COCOeval. The demo's pool and split are made afresh here, as a fresh clone makes them."""
    recorded = json.loads(RECORD.read_text())["demo_val"]
    found = demo_val_ap(TINY_CHECKPOINT, data_root=str(tmp_path / "coco"), split_dir=str(tmp_path / "split"))
    assert found["AP"] >= recorded["AP"] - 0.02, (found, recorded)
    assert found["AP50"] >= recorded["AP50"] - 0.02, (found, recorded)


def test_a_changed_or_missing_checkpoint_is_refused_with_the_way_back(tmp_path):
    copy = tmp_path / "tiny_detr.pth"
    shutil.copy(TINY_CHECKPOINT, copy)
    shutil.copy(RECORD, copy.with_suffix(".json"))
    check_committed_checkpoint(copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(data)
    with pytest.raises(ValueError, match=r"tiny_detr\.pth has SHA-256 .* changed or damaged; restore it with `git "
                                         r"checkout -- .*`make pretrain`"):
        check_committed_checkpoint(copy)
    copy.unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny_detr\.pth \(or its record tiny_detr\.json\) is missing"):
        check_committed_checkpoint(copy)


def test_the_demo_pool_is_a_mini_coco(tmp_path):
    cfg = make_config("demo")
    pool = make_synthetic_coco(tmp_path / "coco", n_images=cfg.n_train + cfg.n_val, seed=cfg.split_seed)
    coco = json.loads(pool.annotations.read_text())
    objects = Counter(a["image_id"] for a in coco["annotations"] if not a["iscrowd"])
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    ids = [im["id"] for im in coco["images"]]
    assert len(ids) == 500 and {a["category_id"] for a in coco["annotations"]} == set(SHAPES)
    empty = [i for i in ids if not any(a["image_id"] == i for a in coco["annotations"])]
    assert 4 <= len(empty) <= 10  # about COCO val2017's 1%
    crowded = [i for i in ids if objects[i] >= CROWDED_SHAPES[0]]
    assert len(crowded) >= 40 and max(objects.values()) <= CROWDED_SHAPES[1] - 1
    assert len(crowd) >= 60 and all(isinstance(a["segmentation"], dict) for a in crowd)  # RLE, as COCO's crowds
