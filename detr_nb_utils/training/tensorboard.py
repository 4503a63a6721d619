"""Live training curves: TensorBoard event files written into every run folder while it trains.

``tensorboard --logdir runs/`` shows every run under its folder's name (``demo/dec6_q100_seed42``). Written per
epoch (at the global step ``epoch x steps per epoch``, so epoch 0, the loaded checkpoint, is step 0):

- ``loss/``: the training loss (weighted sum over terms and layers), the validation loss in its three views;
- one section per loss term (``loss_ce``, ``loss_bbox``, ``loss_giou``, ``class_error``, ``cardinality_error``):
  ``train`` and ``val`` of the final layer, and ``train_layer<l>`` / ``val_layer<l>`` for every decoder layer
  ``l`` = 1..L (L is the final one);
- ``AP/`` and ``AR/``: COCO's twelve statistics of the final layer; ``AP_per_layer/``: AP of each decoder layer;
- ``lr/`` (both learning rates), ``time/`` (seconds of training and evaluation);
- ``val_predictions/image_<id>``: a fixed panel of validation images (the same every epoch), the ground truth in
  white and the final layer's detections scoring at least :data:`PANEL_THRESHOLD` in orange, labelled "name score";

and per training step ``loss/train_step`` (the step's weighted loss, already on the host for the engine's
finiteness check, so logging it adds no device synchronisation; the writer queues events to a background thread:
``benchmarks/bench_tensorboard.py`` measures the cost per step).

Only rank 0 writes. A resumed run appends a new event file in the same folder and purges the events of the
interrupted epoch (``purge_step``: every step after the last finished epoch), so no step is logged twice. The
run folder stays self-contained: the event files are in it. Used by :class:`.engine.TrainingRun`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import ImageDraw
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from ..data.coco import CocoDetection
from .evaluation import STATS

#: the score a detection needs to be drawn in the panel (the paper's demo uses 0.7; 0.5 shows a little more)
PANEL_THRESHOLD = 0.5
#: images in the panel, and the longer side (pixels) they are drawn at
PANEL_IMAGES, PANEL_SIZE = 4, 384
TERMS = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")
LOSS_VIEWS = ("loss_total", "loss_final", "loss_layer_mean")


def panel_indices(dataset: CocoDetection, n: int = PANEL_IMAGES) -> list[int]:
    """``n`` dataset indices spread evenly over the validation images that hold at least one object (the same
    every epoch and every run of one split)."""
    with_objects = [i for i, image_id in enumerate(dataset.ids)
                    if any(not a.get("iscrowd", 0) for a in dataset.coco.imgToAnns.get(image_id, []))]
    if len(with_objects) <= n:
        return with_objects
    return [with_objects[round(k * (len(with_objects) - 1) / (n - 1))] for k in range(n)] if n > 1 else with_objects[:1]


def _xyxy(boxes_xywh) -> torch.Tensor:
    b = torch.as_tensor(np.asarray(boxes_xywh, np.float32)).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def draw_panel(image: torch.Tensor, gt_xywh, det_xywh, det_labels: list[str], size: int = PANEL_SIZE) -> torch.Tensor:
    """``image`` uint8 ``[3,H,W]`` scaled so its longer side is ``size`` pixels, the ground truth boxes (x, y, w, h
    pixels of the original) in white and the detections in orange with their ``det_labels``: uint8 ``[3,H',W']``."""
    scale = size / max(image.shape[1:])
    h, w = round(image.shape[1] * scale), round(image.shape[2] * scale)
    # enlarged: pixels repeated (sharp, and small PNGs); reduced: averaged
    resized = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="nearest") if scale >= 1 else \
        torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bilinear", antialias=True)
    resized = resized[0].round().clamp(0, 255).to(torch.uint8)
    out = draw_bounding_boxes(resized, _xyxy(gt_xywh) * scale, colors="white", width=2)
    if not len(det_labels):
        return out
    boxes = _xyxy(det_xywh) * scale
    out = to_pil_image(draw_bounding_boxes(out, boxes, colors="orange", width=2))
    draw = ImageDraw.Draw(out)  # labels on an orange ground, black text: readable over any image
    for (x0, y0, _, _), text in zip(boxes.tolist(), det_labels):
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill="orange")
        draw.text((x0 + 2, y0 + 1), text, fill="black")
    return pil_to_tensor(out)


class TensorBoardLog:
    """The engine's hook: :meth:`train_step` after every optimizer step, :meth:`epoch_end` after every finished
    epoch, :meth:`close` at the end of the run. ``run_dir``: where the event files go; ``val_set``: the validation
    dataset (the panel's images and ground truth); ``steps_per_epoch``: optimizer steps per epoch;
    ``resumed_after``: the last finished epoch of a resumed run (None: a fresh one). The writer is opened on the
    first event, so reading back a finished run writes no file."""

    def __init__(self, run_dir: str | Path, val_set: CocoDetection, steps_per_epoch: int,
                 resumed_after: int | None = None, panel_images: int = PANEL_IMAGES) -> None:
        self.run_dir, self.val_set, self.steps_per_epoch = Path(run_dir), val_set, steps_per_epoch
        self.purge_step = None if resumed_after is None else resumed_after * steps_per_epoch + 1
        self.panel = panel_indices(val_set, panel_images)
        self.names = {c: v["name"] for c, v in val_set.coco.cats.items()}
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (a dependency)
            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.purge_step)
        return self._writer

    def train_step(self, epoch: int, step: int, loss: float) -> None:
        """The weighted training loss of step ``step`` (1-based) of ``epoch``."""
        self.writer.add_scalar("loss/train_step", loss, (epoch - 1) * self.steps_per_epoch + step)

    def _scalar(self, tag: str, value, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def epoch_end(self, epoch: int, row: Mapping, detections: Mapping[str, np.ndarray] | None = None) -> None:
        """Every scalar of ``row`` (a metrics row of the run folder's ``metrics.jsonl``) worth a curve, and the
        panel drawn with ``detections`` (the epoch's final-layer :func:`.evaluation.detection_arrays`)."""
        step = epoch * self.steps_per_epoch
        layers = 1 + max((int(k.rsplit("_", 1)[1]) + 1 for k in row
                         if k.startswith(("val_loss_ce_", "train_loss_ce_"))), default=0)
        for split in ("train", "val"):
            for term in TERMS:
                self._scalar(f"{term}/{split}", row.get(f"{split}_{term}"), step)
                for layer in range(layers if f"{split}_{term}_0" in row else 0):  # terms logged per layer
                    key = f"{split}_{term}" + (f"_{layer}" if layer < layers - 1 else "")
                    self._scalar(f"{term}/{split}_layer{layer + 1}", row.get(key), step)
        self._scalar("loss/train", row.get("train_loss"), step)
        for view in LOSS_VIEWS:
            self._scalar(f"loss/val_{view.removeprefix('loss_')}", row.get(f"val_{view}"), step)
        for stat in STATS:
            self._scalar(f"{stat[:2]}/{stat}", row.get(f"val_{stat}"), step)
        for layer in range(layers):
            self._scalar(f"AP_per_layer/layer{layer + 1}", row.get(f"val_AP_layer_{layer}"), step)
        for key in ("lr", "lr_backbone"):
            self._scalar(f"lr/{key}", row.get(key), step)
        for key in ("train_time_s", "eval_time_s"):
            self._scalar(f"time/{key.removesuffix('_time_s')}_s", row.get(key), step)
        if detections is not None:
            self._panel(detections, step)
        self.writer.flush()

    def _panel(self, detections: Mapping[str, np.ndarray], step: int) -> None:
        for index in self.panel:
            image_id = self.val_set.ids[index]
            gt = [a["bbox"] for a in self.val_set.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            keep = (detections["image_id"] == image_id) & (detections["score"] >= PANEL_THRESHOLD)
            labels = [f"{self.names.get(int(c), int(c))} {s:.2f}"
                      for c, s in zip(detections["category_id"][keep], detections["score"][keep])]
            drawn = draw_panel(self.val_set.read_image(index), gt, detections["bbox"][keep], labels)
            self.writer.add_image(f"val_predictions/image_{image_id}", drawn, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
