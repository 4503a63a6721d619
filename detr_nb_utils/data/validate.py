"""Named errors for a bad COCO-format detection dataset, found before any training.

:func:`validate_coco_dataset` checks the annotation file and (optionally) reads every image with the reader training
uses (:func:`.images.read_image`, so what validates is exactly what trains), collects ALL problems
by kind (:data:`KINDS`) and raises ONE :class:`DatasetError` giving, per kind, the count, the first offenders by id
and file name, and what to do; a clean dataset gives a :class:`DatasetSummary`. Used by notebook 07_your_dataset and
by the training engine before training, so a bad dataset fails in seconds, not hours later inside a loss.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..models.class_head import normalise_name
from .images import ImageReadError, image_file, read_image, shown

#: how many offending entries the message shows per kind (``.problems`` holds all of them)
SHOWN = 5
#: problem kind -> (counted noun, what is wrong, what to do); the message lists kinds in this order
KINDS: dict[str, tuple[str, str, str]] = {
    "annotation file": ("annotation file", "unusable", "Point annotation_file at a COCO instances JSON file."),
    "top-level keys": ("top-level key", "missing or not a list",
                       "A COCO file is a JSON object with lists 'images', 'annotations' and 'categories'."),
    "no images": ("dataset", "without images", "List every image under 'images'."),
    "no categories": ("dataset", "without categories", "List every class under 'categories'."),
    "bad images": ("image", "with bad fields",
                   "Each needs an integer id, a non-empty file_name and positive integer width and height."),
    "duplicate image ids": ("image id", "used more than once", "Give every image its own id."),
    "bad categories": ("category", "with bad fields", "Each needs an integer id and a non-empty name."),
    "duplicate category ids": ("category id", "used more than once", "Give every category its own id."),
    "duplicate category names": ("set", "of colliding category names", "Classes are matched by name ignoring case, "
                                 "spaces, underscores and hyphens: merge or rename them."),
    "bad annotations": ("annotation", "with bad fields", "Each needs integer id, image_id and category_id and a bbox "
                        "of 4 finite numbers; an area, when given, is a finite number."),
    "duplicate annotation ids": ("annotation id", "used more than once", "Give every annotation its own id."),
    "unknown images": ("annotation", "pointing at an unknown image", "Add the image to 'images' or drop them."),
    "unknown categories": ("annotation", "pointing at an unknown category",
                           "Add the category to 'categories' or drop them."),
    "empty boxes": ("non-crowd box", "with width or height <= 0", "Fix or drop them (bbox: [x, y, w, h] in pixels)."),
    "boxes outside images": ("box", "beyond the image by more than 1 pixel", "Check the bbox format ([x, y, w, h] in "
                             "pixels, not normalised, not [x1, y1, x2, y2]) and the image's width and height."),
    "normalised boxes": ("box", "that look normalised (x, y, w and h all <= 1 on an image larger than 2 px)",
                         "COCO boxes are [x, y, w, h] in pixels: multiply x and w by the image's width, y and h by "
                         "its height."),
    "missing image folder": ("image folder", "missing", "Point image_dir at the images."),
    "files outside the image folder": ("image", "whose file_name leads outside the image folder",
                                       "Copy the files into image_dir and name them relative to it (no '..', no "
                                       "absolute path, no symlink pointing out)."),
    "missing files": ("image file", "missing", "Copy the images into image_dir or fix their file_name."),
    "unreadable images": ("image file", "not readable",
                          "Re-encode them as 8-bit JPEG or PNG (or re-download them), or drop them."),
    "size mismatches": ("image", "whose pixel size is not the annotated width x height",
                        "Fix width and height in the annotation file (EXIF orientation is ignored, as in COCO)."),
}


class DatasetError(ValueError):
    """A COCO-format dataset that cannot be trained on. ``problems``: kind (a key of :data:`KINDS`) -> every
    offending entry, named by id and file name; ``path``: the annotation file."""

    def __init__(self, message: str, problems: dict[str, list[str]], path: Path) -> None:
        super().__init__(message)
        self.problems, self.path = problems, path


@dataclass(frozen=True)
class DatasetSummary:
    """What a valid dataset holds: counts of images, annotations, categories, crowd annotations, images that have
    no annotation (fine for DETR: it learns "no object" from them), and annotations without ``area``, which the
    dataset fills from their box (w x h; :func:`.coco.fill_areas`) for COCO evaluation."""

    annotation_file: Path
    image_dir: Path
    images: int
    annotations: int
    categories: int
    crowd: int
    images_without_annotations: int
    areas_filled: int = 0
    #: category id -> name, as the file lists them (the label map is made from these)
    category_names: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per count (index ``field``, column ``value``), for a notebook."""
        shown = [f.name for f in fields(self) if f.name != "category_names"]
        return pd.DataFrame({"value": [getattr(self, n) for n in shown]}, index=pd.Index(shown, name="field"))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun[:-1] + "ies" if noun.endswith("y") else noun + ("es" if noun[-1] == "x" else "s")


def _fail(path: Path, problems: dict[str, list[str]]) -> DatasetError:
    """The one error for all ``problems``: per kind the count, the first :data:`SHOWN` entries and what to do."""
    total = sum(map(len, problems.values()))
    lines = [f"{path}: the dataset cannot be trained on ({total} {_plural('problem', total)} of "
             f"{len(problems)} {_plural('kind', len(problems))}); fix them and validate again:"]
    for kind, entries in problems.items():
        (noun, what, todo), n = KINDS[kind], len(entries)
        more = f"; ... ({n - SHOWN} more in .problems[{kind!r}])" if n > SHOWN else ""
        lines.append(f"  - {n} {_plural(noun, n)} {what}: {'; '.join(entries[:SHOWN])}{more}. {todo}")
    return DatasetError("\n".join(lines), problems, path)


def _load(path: Path) -> dict[str, Any]:
    """The annotation file's JSON object, or a DatasetError at once naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        reason = "does not exist"
    except (OSError, UnicodeDecodeError) as e:
        reason = f"cannot be read ({e})"
    except json.JSONDecodeError as e:
        reason = f"is not JSON ({e})"
    else:
        if isinstance(data, dict):
            return data
        reason = f"is a JSON {type(data).__name__}, not an object"
    raise _fail(path, {"annotation file": [f"{path} {reason}"]})


def _duplicates(groups: dict[Any, list[str]], what: str) -> list[str]:
    return [f"{what} {k} used {len(v)} times ({', '.join(v)})" for k, v in groups.items() if len(v) > 1]


def validate_coco_dataset(annotation_file: str | Path, image_dir: str | Path, *, check_images: bool = True,
                          progress: bool = False) -> DatasetSummary:
    """Check a COCO instances file and its images (each image decoded when ``check_images``; a tqdm bar when
    ``progress``); the summary of a clean dataset, else one :class:`DatasetError` listing every problem by kind."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    data = _load(annotation_file)
    problems: dict[str, list[str]] = defaultdict(list)
    lists: dict[str, list] = {}
    for key in ("images", "annotations", "categories"):
        if isinstance(data.get(key), list):
            lists[key] = data[key]
        else:
            problems["top-level keys"].append(f"'{key}' " + (f"is {type(data[key]).__name__}, not a list"
                                                             if key in data else "missing"))
    images, anns, cats = lists.get("images"), lists.get("annotations", []), lists.get("categories")
    for key in ("images", "categories"):
        if lists.get(key) == []:
            problems[f"no {key}"].append(f"{annotation_file.name} lists no {key}")

    valid: dict[int, dict] = {}  # image id -> its entry (the first, if the id repeats), for images with good fields
    image_files: dict[int, list[str]] = defaultdict(list)
    for i, im in enumerate(images or []):
        if not isinstance(im, dict):
            problems["bad images"].append(f"images[{i}] is not an object")
            continue
        checks = {"id": _int(im.get("id")), "file_name": isinstance(im.get("file_name"), str) and im["file_name"]}
        checks |= {k: _int(im.get(k)) and im[k] > 0 for k in ("width", "height")}
        file_name = shown(im["file_name"]) if checks["file_name"] else im.get("file_name")
        name = f"image {im['id']} ({file_name})" if checks["id"] else f"images[{i}] ({file_name})"
        if bad := [f"{k}={im.get(k)!r}" for k, ok in checks.items() if not ok]:
            problems["bad images"].append(f"{name}: {', '.join(bad)}")
        if checks["id"]:
            image_files[im["id"]].append(str(file_name))
            if not bad:
                valid.setdefault(im["id"], im)
    problems["duplicate image ids"] += _duplicates(image_files, "image id")

    cat_names: dict[int, list[str]] = defaultdict(list)
    by_key: dict[str, list[str]] = defaultdict(list)
    for i, c in enumerate(cats or []):
        c = c if isinstance(c, dict) else {}
        ok_id, ok_name = _int(c.get("id")), isinstance(c.get("name"), str) and c["name"].strip() != ""
        if bad := [f"{k}={c.get(k)!r}" for k, ok in (("id", ok_id), ("name", ok_name)) if not ok]:
            name = f"category {c['id']}" if ok_id else f"categories[{i}]"
            problems["bad categories"].append(f"{name}: {', '.join(bad)}")
        if ok_id:
            cat_names[c["id"]].append(repr(c.get("name")))
        if ok_name:  # the key class-name matching uses, spaces dropped too
            by_key[normalise_name(c["name"]).replace(" ", "")].append(f"{c['name']!r} (id {c.get('id')})")
    problems["duplicate category ids"] += _duplicates(cat_names, "category id")
    problems["duplicate category names"] += [" ~ ".join(v) for v in by_key.values() if len(v) > 1]

    ann_ids: dict[int, list[str]] = defaultdict(list)
    annotated: set[int] = set()
    crowd = no_area = 0
    for i, a in enumerate(anns):
        a = a if isinstance(a, dict) else {}
        name = f"annotation {a['id']}" if _int(a.get("id")) else f"annotations[{i}]"
        box = a.get("bbox")
        box_ok = isinstance(box, list) and len(box) == 4 and all(_num(v) for v in box)
        bad = [f"{k}={a.get(k)!r}" for k in ("id", "image_id", "category_id") if not _int(a.get(k))]
        bad += [] if box_ok else [f"bbox={box!r}"]
        bad += [f"area={a['area']!r}"] if "area" in a and not _num(a["area"]) else []
        no_area += "area" not in a and box_ok
        if bad:
            problems["bad annotations"].append(f"{name}: {', '.join(bad)}")
        crowd += bool(a.get("iscrowd"))
        img_id, cat_id = a.get("image_id"), a.get("category_id")
        if _int(a.get("id")):
            ann_ids[a["id"]].append(f"image {img_id}")
        if _int(img_id):
            annotated.add(img_id)
            if images is not None and img_id not in image_files:
                problems["unknown images"].append(f"{name} -> image_id {img_id}")
        if _int(cat_id) and cats is not None and cat_id not in cat_names:
            problems["unknown categories"].append(f"{name} (image {img_id}) -> category_id {cat_id}")
        if not box_ok:
            continue
        x, y, w, h = box
        im = valid.get(img_id) if _int(img_id) else None
        where = f"{name} on image {img_id}" + (f" ({shown(im['file_name'])}, {im['width']}x{im['height']})"
                                               if im else "")
        if not a.get("iscrowd") and (w <= 0 or h <= 0):
            problems["empty boxes"].append(f"{where}: bbox {box}")
        if im and (x < -1 or y < -1 or x + w > im["width"] + 1 or y + h > im["height"] + 1):
            problems["boxes outside images"].append(f"{where}: bbox {box}")
        if im and im["width"] > 2 and im["height"] > 2 and w > 0 and h > 0 and max(box) <= 1:
            problems["normalised boxes"].append(f"{where}: bbox {box}")
    problems["duplicate annotation ids"] += _duplicates(ann_ids, "annotation id")

    if valid:
        if not image_dir.is_dir():
            if check_images:
                problems["missing image folder"].append(f"{image_dir} (for {len(valid)} images)")
        else:
            _check_files(valid, image_dir, problems, progress, check_images)
    if found := {k: problems[k] for k in KINDS if problems.get(k)}:
        raise _fail(annotation_file, found)
    return DatasetSummary(annotation_file, image_dir, images=len(images or []), annotations=len(anns),
                          categories=len(cats or []), crowd=crowd,
                          images_without_annotations=len(image_files.keys() - annotated), areas_filled=no_area,
                          category_names={int(c["id"]): str(c["name"]) for c in cats or []})


def _check_files(valid: dict[int, dict], image_dir: Path, problems: dict[str, list[str]], progress: bool,
                 read: bool) -> None:
    """Each image's file: inside ``image_dir`` (:func:`.images.image_file`); when ``read``, present, read by the one
    image reader exactly as training reads it (:func:`.images.read_image`: a truncated file fails, whatever a
    notebook set ``LOAD_TRUNCATED_IMAGES`` to) and of the annotated size (the stored one, EXIF ignored)."""
    for img_id, im in tqdm(valid.items(), desc="check images", total=len(valid), disable=not progress or not read,
                           leave=False):
        name = f"image {img_id} ({shown(im['file_name'])})"
        try:
            path = image_file(image_dir, im["file_name"])
        except ImageReadError as e:
            problems["files outside the image folder"].append(f"{name}: {e.reason.split('; ')[0]}")
            continue
        if not read:
            continue
        if not path.is_file():
            problems["missing files"].append(f"{name}: no file {shown(path)}")
            continue
        try:
            h, w = read_image(path).shape[-2:]
        except ImageReadError as e:
            problems["unreadable images"].append(f"{name}: {e.reason}")
            continue
        if (w, h) != (im["width"], im["height"]):
            problems["size mismatches"].append(f"{name}: file is {w}x{h}, annotated {im['width']}x{im['height']}")
