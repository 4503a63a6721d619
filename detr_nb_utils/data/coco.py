"""COCO detection data for DETR: the dataset and the padding collate function (transforms: :mod:`.transforms`).

Targets follow the project's one data contract (ARCHITECTURE.md, "Data conventions"): per image a dict with
``boxes`` float32 [n, 4] normalised (cx, cy, w, h) of the transformed image, ``labels`` int64 [n] class indices of
the run's :class:`~.label_map.LabelMap` (COCO's label space: the COCO category ids 1..90 themselves, never remapped;
a dataset's own: 0..K-1), ``image_id`` int64 [], ``orig_size`` int64 [2] (h, w as stored), ``size`` int64 [2]
(h, w after transforms). Crowd annotations are excluded (COCO evaluation reads them from the annotation file).
Used by notebooks 03-05 (training, evaluation, analysis) through ``build_dataset`` and ``collate_fn``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..models.box_ops import normalise_boxes
from .images import ImageReadError, image_file, image_size, read_image, shown
from .label_map import LabelMap
from .transforms import make_transforms


def coco_boxes_to_xyxy(bboxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO [x, y, w, h] pixels [n, 4] -> clamped [x1, y1, x2, y2] float32 [n, 4] and a keep mask [n] (w, h > 0)."""
    xyxy = box_convert(torch.as_tensor(bboxes, dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return xyxy.numpy(), keep.numpy()


class CocoDetection(Dataset):
    """Images and DETR targets from a COCO instances file and its image folder.

    ``dataset[i]`` -> ``(image, target)``: image float32 [3, H, W] (uint8 if ``transforms`` is None), target as in
    the module docstring. Images are read by the package's one image reader (:func:`.images.read_image`: 8-bit
    RGB, EXIF orientation ignored as COCO's annotations ignore it, a file name leading outside ``img_dir``
    refused), as the validation reads them. An annotation without ``area`` gets its box's (w x h), so COCO
    evaluation has one for every ground-truth box (``num_areas_filled``). ``image_ids`` / ``max_images`` select
    a subset (ids in ascending order).
    Counters: ``num_crowd_excluded`` and ``num_degenerate_dropped`` (zero width/height after clamping; fixed at
    construction) and ``num_dropped_by_transforms`` (boxes the training crop leaves with zero width or height, the
    only boxes a transform drops; accumulated per process: with DataLoader workers each worker counts its own).
    ``stats()`` gathers them. ``labels``: the label map turning category ids into class indices (None: COCO's,
    the ids themselves). Used by notebooks 03-05 and 07.
    """

    def __init__(self, ann_file: Path | str, img_dir: Path | str, transforms: v2.Transform | None = None, *,
                 image_ids: Sequence[int] | None = None, max_images: int | None = None,
                 labels: LabelMap | None = None) -> None:
        self.ann_file, self.img_dir, self.transforms = Path(ann_file), Path(img_dir), transforms
        self.labels = labels or LabelMap.coco()
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file {self.ann_file} not found; check the path "
                                    f"(split files come from make_split, notebook 01).")
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.img_dir} not found; download with "
                                    f"`python -m detr_nb_utils.data.download coco --root data/coco` or fix img_dir.")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(self.ann_file))
        self.num_areas_filled = fill_areas(self.coco.dataset.get("annotations", []))
        ids = sorted(self.coco.getImgIds())
        if image_ids is not None:
            unknown = sorted(set(image_ids) - set(ids))
            if unknown:
                raise ValueError(f"image_ids not in {self.ann_file}: {unknown[:10]} ({len(unknown)} in all).")
            ids = sorted(set(image_ids))
        if max_images is not None:
            if max_images <= 0:
                raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}.")
            ids = ids[:max_images]
        self.ids: list[int] = ids
        self.num_crowd_excluded = self.num_degenerate_dropped = self.num_dropped_by_transforms = 0
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for image_id in ids:
            self._targets[image_id] = self._prepare(image_id)

    def _prepare(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[image_id]
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes = [a for a in anns if not a.get("iscrowd", 0)]
        self.num_crowd_excluded += len(anns) - len(boxes)
        xyxy, keep = coco_boxes_to_xyxy(np.array([a["bbox"] for a in boxes], dtype=np.float32),
                                        info["height"], info["width"])
        self.num_degenerate_dropped += int((~keep).sum())
        labels = self.labels.to_index([a["category_id"] for a in boxes])
        return xyxy[keep], labels[keep]

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """Path of the image file of ``self.ids[index]`` (:func:`.images.image_file`: inside ``img_dir``)."""
        return image_file(self.img_dir, self.coco.imgs[self.ids[index]]["file_name"])

    def read_image(self, index: int) -> torch.Tensor:
        """The image of ``self.ids[index]``, uint8 [3, H, W] RGB, by :func:`.images.read_image`; its
        :class:`~.images.ImageReadError` names the file and the reason."""
        return read_image(self.image_path(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = self.read_image(index)
        h, w = image.shape[-2:]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(f"image {self.image_path(index)} is {h}x{w} (h x w) but {self.ann_file} says "
                             f"{info['height']}x{info['width']}; the file does not belong to these annotations.")
        xyxy, labels = self._targets[image_id]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(xyxy), format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(labels),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        self.num_dropped_by_transforms += len(xyxy) - len(target["boxes"])
        size = image.shape[-2:]
        target["size"] = torch.tensor(list(size), dtype=torch.int64)
        target["boxes"] = normalise_boxes(target["boxes"], size)
        return image.as_subclass(torch.Tensor), target

    def stats(self) -> dict[str, int]:
        """Images, kept boxes and every kind of dropped annotation (see the class docstring)."""
        return {"images": len(self.ids), "boxes": sum(len(t[1]) for t in self._targets.values()),
                "crowd_excluded": self.num_crowd_excluded, "degenerate_dropped": self.num_degenerate_dropped,
                "dropped_by_transforms": self.num_dropped_by_transforms}

    def verify(self, decode: bool = True, progress: bool = True) -> int:
        """Check every image up front: present, decodable (``decode``; else header only), of the annotated size.

        Returns the number of images checked; raises ONE ``ValueError`` listing every bad file by path.
        Notebook 03 runs it before training.
        """
        problems: list[str] = []
        for index in tqdm(range(len(self)), desc="verify images", disable=not progress):
            info = self.coco.imgs[self.ids[index]]
            path = self.img_dir / info["file_name"]
            try:
                path = self.image_path(index)
                if decode:
                    h, w = self.read_image(index).shape[-2:]
                else:
                    w, h = image_size(path)
            except ImageReadError as e:
                problems.append(f"{shown(path)}: {'missing' if e.reason == 'no such file' else 'corrupt'} "
                                f"({e.reason})")
                continue
            if (h, w) != (info["height"], info["width"]):
                problems.append(f"{path}: {h}x{w}, annotations say {info['height']}x{info['width']}")
        if problems:
            raise ValueError(f"{len(problems)} of {len(self)} images in {self.img_dir} are unusable:\n  "
                             + "\n  ".join(problems)
                             + "\nRe-download them (python -m detr_nb_utils.data.download coco) "
                             "or restrict the dataset with image_ids=.")
        return len(self)


def fill_areas(annotations: list[dict]) -> int:
    """Give every annotation without ``area`` its box's area (w x h, pixels), in place, as COCO evaluation needs
    one for every ground-truth box (its small / medium / large ranges); returns how many were filled."""
    filled = 0
    for a in annotations:
        if isinstance(a, dict) and "area" not in a and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
            filled += 1
    return filled


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Pad a list of ``(image [3, h_i, w_i], target)`` at the bottom/right with zeros.

    Returns ``images`` float [B, 3, H_max, W_max], ``mask`` bool [B, H_max, W_max] (True on padding) and the
    targets as a list of dicts. Used by notebooks 03-05 as the DataLoader's ``collate_fn``.
    """
    images = [b[0] for b in batch]
    h_max = max(im.shape[-2] for im in images)
    w_max = max(im.shape[-1] for im in images)
    out = images[0].new_zeros((len(images), images[0].shape[0], h_max, w_max))
    mask = torch.ones((len(images), h_max, w_max), dtype=torch.bool)
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        out[i, :, :h, :w] = im
        mask[i, :h, :w] = False
    return out, mask, [b[1] for b in batch]


def build_dataset(ann_file: Path | str, img_dir: Path | str, split: str, *, image_ids: Sequence[int] | None = None,
                  max_images: int | None = None, labels: LabelMap | None = None,
                  **transform_kwargs: Any) -> CocoDetection:
    """``CocoDetection`` with ``make_transforms(split, **transform_kwargs)``; used by notebooks 03-05 and 07."""
    return CocoDetection(ann_file, img_dir, make_transforms(split, **transform_kwargs),
                         image_ids=image_ids, max_images=max_images, labels=labels)


# (image folder, annotation file) relative to data_root, in the order they are tried
COCO_LAYOUTS = {
    "COCO val2017": ("val2017", "annotations/instances_val2017.json"),
    "shared sample": ("images", "annotations/instances_val2017_sample.json"),
    "synthetic": ("images", "annotations/instances.json"),
}


def resolve_coco_layout(data_root: str | Path) -> tuple[Path, Path]:
    """``(image_dir, annotation_file)`` of the first layout of :data:`COCO_LAYOUTS` found under ``data_root``:
    COCO's (``val2017/`` + ``annotations/instances_val2017.json``), the shared sample's (``images/`` +
    ``annotations/instances_val2017_sample.json``) or the synthetic data's (``images/`` +
    ``annotations/instances.json``). Raises ``FileNotFoundError`` listing what was looked for."""
    root = Path(data_root)
    for images, ann in COCO_LAYOUTS.values():
        if (root / images).is_dir() and (root / ann).is_file():
            return root / images, root / ann
    tried = "; ".join(f"{k}: {root / i}/ + {root / a}" for k, (i, a) in COCO_LAYOUTS.items())
    raise FileNotFoundError(f"no COCO-format dataset under {root}. Looked for {tried}. Download COCO with "
                            f"`python -m detr_nb_utils.data.download coco --root {root}` or set image_dir and "
                            f"annotation_file.")


def resolve_dataset_layout(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{"train": (annotation file, image folder), "val": (...)}`` of a dataset folder laid out like COCO:
    ``annotations/instances_<split>*.json`` with images in ``<split>*/`` or ``images/<split>*/`` (COCO's own
    ``train2017``/``val2017``), or one folder per split holding its images and ``_annotations.coco.json`` (the
    layout of common annotation tools' COCO export), where ``<split>`` is ``train`` and ``val`` (``valid`` too).
    Raises ``FileNotFoundError`` saying what was looked for."""
    root = Path(root)
    found: dict[str, tuple[Path, Path]] = {}
    for split, names in (("train", ("train",)), ("val", ("val", "valid"))):
        for name in names:
            for ann in sorted((root / "annotations").glob(f"instances_{name}*.json")):
                suffix = ann.stem.removeprefix("instances_")
                for images in (root / suffix, root / "images" / suffix, root / name, root / "images" / name):
                    if images.is_dir():
                        found.setdefault(split, (ann, images))
            if (root / name / "_annotations.coco.json").is_file():
                found.setdefault(split, (root / name / "_annotations.coco.json", root / name))
    missing = [s for s in ("train", "val") if s not in found]
    if missing:
        raise FileNotFoundError(
            f"no {' and no '.join(missing)} set in the dataset folder {root}. Looked for "
            f"annotations/instances_<split>*.json with images in <split>*/ or images/<split>*/, and for "
            f"<split>/_annotations.coco.json (split: train; val or valid). Or set train_annotation_file, "
            f"train_image_dir, val_annotation_file and val_image_dir.")
    return found
