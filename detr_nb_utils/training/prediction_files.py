"""Writing predictions into a folder: each image with its boxes drawn, ``results.json`` and ``images.json``, for
exactly the images of one call.

:func:`write_outputs` writes ``<stem>.jpg`` per image with its boxes and ``name score`` labels, ``results.json``
(COCO's results format, in the dataset's category ids) and ``images.json`` (a COCO file of the images and
categories), so that ``COCO("images.json").loadRes("results.json")`` works. Every file is written under a temporary
name and renamed.

An output folder holding an earlier call's files is **cleaned**: that call's ``results.json``, ``images.json`` and
the drawn images its ``images.json`` lists are removed first, so the folder never mixes two calls. Nothing else is
removed or overwritten: a file at a name this call would write that no earlier call wrote (your own image, an
unrelated ``results.json``), or an input image, is refused with :class:`OutputFolderError` before anything changes.
Used by :mod:`detr_nb_utils.predict` and notebook 07_your_dataset (predictions of :mod:`.inference`).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import encode_jpeg
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes
from tqdm.auto import tqdm

from ..data import atomic
from ..data.images import ImageReadError, read_image, shown
from .inference import ImagePrediction, PredictResult

RESULTS, IMAGES = "results.json", "images.json"
#: how ``images.json`` describes itself; an ``images.json`` without it was not written here and is never removed
DESCRIPTION = "images predicted by detr_nb_utils"
# box colours, one per class index (cycled): distinct on photographs and on the demo's shapes
_PALETTE = ((255, 56, 56), (72, 209, 204), (255, 178, 29), (146, 204, 23), (61, 219, 134), (0, 148, 255),
            (132, 56, 255), (255, 55, 199), (255, 255, 255), (255, 112, 31), (0, 194, 255), (187, 212, 0))


class OutputFolderError(ValueError):
    """An output folder this call cannot write into without overwriting a file it did not write; the message
    names the file and what to do."""


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """``<stem>.jpg`` per input, made unique (``<stem>_2.jpg``, …) when inputs share a stem (case ignored, for
    case-insensitive file systems)."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem = Path(p).stem or "image"
        name, k = f"{stem}.jpg", 1
        while name.lower() in used:
            k += 1
            name = f"{stem}_{k}.jpg"
        used.add(name.lower())
        names.append(name)
    return names


def draw_prediction(image: torch.Tensor, pred: ImagePrediction) -> torch.Tensor:
    """``image`` (uint8 [3, H, W]) with the boxes of ``pred`` drawn and labelled ``name score``, one colour per
    class."""
    if not len(pred):
        return image
    h, w = image.shape[-2:]
    boxes = torch.from_numpy(pred.boxes).float()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    captions = [f"{n} {s:.2f}" for n, s in zip(pred.names, pred.scores.tolist())]
    colors = [_PALETTE[int(i) % len(_PALETTE)] for i in pred.indices]
    return draw_bounding_boxes(image, boxes, labels=captions, colors=colors, width=max(1, round(max(h, w) / 300)))


def earlier_outputs(out_dir: str | os.PathLike) -> set[str]:
    """The names of the files an earlier :func:`write_outputs` left in ``out_dir``: its ``images.json``,
    ``results.json`` and the drawn images ``images.json`` lists (plain ``.jpg`` names, never a path). Raises
    :class:`OutputFolderError` for a ``results.json`` or ``images.json`` that no earlier call wrote."""
    out_dir = Path(out_dir)
    images, results = out_dir / IMAGES, out_dir / RESULTS
    if not images.exists():
        if results.exists():
            raise OutputFolderError(f"{results} exists but {out_dir} holds no {IMAGES}: it is not the output of an "
                                    f"earlier prediction, so it is left alone; move it or choose another output "
                                    f"folder (--out)")
        return set()
    try:
        data = json.loads(images.read_text())
        ours = str(data["info"]["description"]).startswith(DESCRIPTION) and isinstance(data["images"], list)
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise OutputFolderError(f"{images} was not written by an earlier prediction (or is damaged), so it is left "
                                f"alone; move it or choose another output folder (--out)")
    drawn = {im.get("drawn") for im in data["images"] if isinstance(im, dict)}
    return {RESULTS, IMAGES} | {d for d in drawn if isinstance(d, str) and d == Path(d).name and
                                d.lower().endswith(".jpg")}


def _clear_earlier(out_dir: Path, names: list[str], inputs: set[Path]) -> None:
    """Refuse a name this call would write over an input or a file no earlier call wrote; then remove the earlier
    call's files (its JSON first, so no stale pair is ever left complete)."""
    earlier = earlier_outputs(out_dir) if out_dir.is_dir() else set()
    for name in names:
        target = out_dir / name
        if target.resolve() in inputs:
            raise OutputFolderError(f"{shown(target)} is one of the input images; write the predictions to another "
                                    f"folder (--out)")
        if (target.exists() or target.is_symlink()) and name not in earlier:
            raise OutputFolderError(f"{shown(target)} exists and was not written by an earlier prediction into "
                                    f"{shown(out_dir)}; move it, or choose another output folder (--out)")
    for name in [RESULTS, IMAGES, *sorted(earlier - {RESULTS, IMAGES} - set(names))]:
        (out_dir / name).unlink(missing_ok=True)


def write_outputs(result: PredictResult, out_dir: str | os.PathLike, image_ids: Sequence[int] | None = None,
                  progress: bool = False) -> dict[str, Path]:
    """Write the predictions of ``result`` into ``out_dir`` (created; an earlier call's files there are removed
    first, see the module docstring), every file atomically.

    - ``<stem>.jpg`` per image (:func:`output_names`): the image with its boxes and labels drawn;
    - ``results.json``: COCO's results format, a list of ``{"image_id", "category_id" (the dataset's id),
      "bbox" [x, y, w, h] pixels, "score"}``;
    - ``images.json``: a COCO file with ``images`` (``id``, ``file_name`` (the input's), ``width``, ``height``,
      ``path`` (as given), ``drawn`` (the drawn file)), ``categories`` (``id``, ``name``) and no annotations, so
      that ``COCO("images.json").loadRes("results.json")`` works (pycocotools' ``loadRes`` cannot read an EMPTY
      results list, which a high threshold can give).

    ``image_ids``: one per image of ``result.images`` (default 1, 2, …), e.g. a dataset's own ids. An image that
    can no longer be read (changed since it was predicted) moves from ``result.images`` to ``result.failed``.
    Raises :class:`OutputFolderError` (nothing changed) when a file would be overwritten that no earlier call wrote.
    Returns the paths written: ``{"results", "images", "drawn": out_dir}``.
    """
    out_dir = Path(out_dir)
    ids = list(range(1, len(result.images) + 1)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != len(result.images) or len(set(ids)) != len(ids):
        raise ValueError(f"image_ids must give {len(result.images)} distinct ids, one per predicted image; "
                         f"got {len(ids)} ({len(set(ids))} distinct)")
    names = output_names([p.path for p in result.images])
    _clear_earlier(out_dir, names, {p.path.resolve() for p in result.images})
    kept, images, detections = [], [], []
    for pred, image_id, name in tqdm(list(zip(result.images, ids, names)), desc="write", unit="image",
                                     disable=not progress):
        try:
            pixels = read_image(pred.path)
        except ImageReadError as e:
            result.failed.append((pred.path, f"{e.reason} (it was read for the prediction; did it change since?)"))
            continue
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, not a dependency here
            warnings.filterwarnings("ignore", "The image", DeprecationWarning)
            jpeg = encode_jpeg(draw_prediction(pixels, pred), quality=90)
        atomic.write_bytes(out_dir / name, jpeg.numpy().tobytes())
        kept.append(pred)
        h, w = pred.size
        images.append({"id": image_id, "file_name": pred.path.name, "width": w, "height": h,
                       "path": str(pred.path), "drawn": name})
        xywh = box_convert(torch.from_numpy(pred.boxes).reshape(-1, 4), "xyxy", "xywh").tolist()
        detections += [{"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in b],
                        "score": round(float(s), 5)}
                       for c, b, s in zip(pred.category_ids, xywh, pred.scores)]
    result.images = kept
    labels = result.labels
    coco = {"info": {"description": f"{DESCRIPTION} (score >= {result.threshold:g})"},
            "images": images, "annotations": [],
            "categories": [{"id": int(i), "name": n} for i, n in zip(labels.ids, labels.names)]}
    paths = {"results": out_dir / RESULTS, "images": out_dir / IMAGES, "drawn": out_dir}
    atomic.write_text(paths["images"], json.dumps(coco, indent=1) + "\n")
    atomic.write_text(paths["results"], json.dumps(detections) + "\n")
    return paths
