"""TensorBoard's event files: the scalars of a metrics row under their tags, the fixed panel of validation images,
no step logged twice after a resume, and nothing written by a run that only reads back."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detr_nb_utils.data.coco import CocoDetection
from detr_nb_utils.training.tensorboard import PANEL_THRESHOLD, TensorBoardLog, draw_panel, panel_indices


@pytest.fixture(scope="module")
def val_set(coco_sample: Path) -> CocoDetection:
    return CocoDetection(coco_sample / "annotations" / "instances_val2017_sample.json", coco_sample / "images")


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


ROW = {"epoch": 1, "lr": 1e-4, "lr_backbone": 1e-5, "train_time_s": 3.0, "eval_time_s": 1.5, "train_loss": 4.2,
       "train_loss_ce": 0.3, "train_loss_ce_0": 0.4, "val_loss_ce": 0.2, "val_loss_ce_0": 0.25, "val_loss_bbox": 0.05,
       "val_loss_bbox_0": 0.07, "val_class_error": 3.0,
       "val_loss_total": 3.9, "val_loss_final": 0.6, "val_loss_layer_mean": 0.65, "val_AP": 0.5, "val_AP50": 0.7,
       "val_APl": float("nan"), "val_AR100": 0.6, "val_AP_layer_0": 0.4, "val_AP_layer_1": 0.5,
       "random_weights": False, "effective_precision": "fp32"}


def test_epoch_scalars_under_their_tags(tmp_path, val_set):
    log = TensorBoardLog(tmp_path, val_set, steps_per_epoch=10)
    log.epoch_end(1, ROW)
    log.close()
    acc = events(tmp_path)
    scalars = acc.Tags()["scalars"]
    expected = {"loss_ce/train": 0.3, "loss_ce/train_layer1": 0.4, "loss_ce/train_layer2": 0.3, "loss_ce/val": 0.2,
                "loss_ce/val_layer1": 0.25, "loss_bbox/val_layer1": 0.07, "loss_bbox/val_layer2": 0.05, "loss/train": 4.2, "loss/val_total": 3.9,
                "loss/val_final": 0.6, "loss/val_layer_mean": 0.65, "AP/AP": 0.5, "AP/AP50": 0.7, "AR/AR100": 0.6,
                "AP_per_layer/layer1": 0.4, "AP_per_layer/layer2": 0.5, "lr/lr": 1e-4, "lr/lr_backbone": 1e-5,
                "time/train_s": 3.0, "time/eval_s": 1.5}
    for tag, value in expected.items():
        (event,) = acc.Scalars(tag)
        assert event.step == 10 and event.value == pytest.approx(value), tag
    assert "AP/APl" not in scalars  # NaN (no large objects) is no point on a curve
    assert "class_error/val" in scalars and "class_error/val_layer2" not in scalars  # a final-layer-only term
    assert not any("random_weights" in t or "precision" in t for t in scalars)


def test_panel_draws_the_same_images_every_epoch(tmp_path, val_set):
    indices = panel_indices(val_set, 4)
    assert len(indices) == 4 and indices == panel_indices(val_set, 4)
    assert all(val_set.coco.imgToAnns[val_set.ids[i]] for i in indices)
    ids = np.array([val_set.ids[i] for i in indices])
    detections = {"image_id": np.repeat(ids, 2), "category_id": np.ones(8, np.int64),
                  "score": np.tile([0.9, PANEL_THRESHOLD - 0.1], 4).astype(np.float32),
                  "bbox": np.tile([[10, 10, 50, 40]], (8, 1)).astype(np.float32)}
    log = TensorBoardLog(tmp_path, val_set, steps_per_epoch=5)
    log.epoch_end(0, {"epoch": 0, "val_AP": 0.1}, detections)
    log.epoch_end(1, {"epoch": 1, "val_AP": 0.2}, detections)
    log.close()
    acc = events(tmp_path)
    assert sorted(acc.Tags()["images"]) == sorted(f"val_predictions/image_{i}" for i in ids)
    assert [e.step for e in acc.Images(f"val_predictions/image_{ids[0]}")] == [0, 5]


def test_draw_panel_scales_to_the_longer_side():
    image = torch.zeros(3, 60, 120, dtype=torch.uint8)
    drawn = draw_panel(image, [[0, 0, 60, 30]], [[60, 30, 30, 15]], ["person 0.90"], size=240)
    assert drawn.shape == (3, 120, 240) and drawn.dtype == torch.uint8
    assert drawn[1, 0, 60].item() > 0  # the ground truth's green top edge, at twice its position
    assert drawn.sum() > 0 and drawn[:, 100:, :100].sum() == 0  # nothing drawn where no box is


def test_a_resumed_run_logs_no_step_twice(tmp_path, val_set):
    log = TensorBoardLog(tmp_path, val_set, steps_per_epoch=4)
    for step in range(1, 5):
        log.train_step(1, step, 10.0 - step)
    log.epoch_end(1, {"epoch": 1, "train_loss": 7.0})
    for step in range(1, 3):  # epoch 2 interrupted after two steps
        log.train_step(2, step, 99.0)
    log.close()
    # a resumed run is a later process: its event file's name (a timestamp in seconds, then a per-process counter
    # that sorts as text) must sort after the first one's, as it does across processes
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)
    resumed = TensorBoardLog(tmp_path, val_set, steps_per_epoch=4, resumed_after=1)
    for step in range(1, 5):
        resumed.train_step(2, step, 5.0 - step)
    resumed.epoch_end(2, {"epoch": 2, "train_loss": 3.0})
    resumed.close()
    steps = [(e.step, e.value) for e in events(tmp_path).Scalars("loss/train_step")]
    assert steps == [(s, 10.0 - s) for s in range(1, 5)] + [(4 + s, 5.0 - s) for s in range(1, 5)]
    assert [e.step for e in events(tmp_path).Scalars("loss/train")] == [4, 8]


def test_nothing_written_until_something_is_logged(tmp_path, val_set):
    TensorBoardLog(tmp_path, val_set, steps_per_epoch=4, resumed_after=2).close()
    assert list(tmp_path.iterdir()) == []
