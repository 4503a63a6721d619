"""The seeded train/val split of COCO val2017 (4,000 / 1,000 images) and its manifest.

``make_split`` writes ``train.json`` and ``val.json`` (valid COCO instances files: exactly their images, all of those
images' annotations with their original ids, all 80 categories, ``info``/``licenses`` kept) and
``split_manifest.json`` (seed, sorted image ids of each side, sha256 of the source and output files, counts).
The same seed and source give byte-identical files. ``verify_split`` re-checks a split from its manifest;
``split_diversity`` tabulates how each side preserves COCO's category mix,
``largest_share_gap`` sums it up in one number and ``random_split_gaps`` gives that number's spread over random
splits of the same images (the yardstick). Used by ``notebooks/01_data_split.ipynb``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import atomic
from .download import sha256_file

MANIFEST = "split_manifest.json"
SIDES = ("train", "val")
CROWDED_THRESHOLD = 50  # non-crowd boxes per image above which a 50-query model cannot find every object
_RNG_DOC = ("numpy.random.default_rng(seed).permutation over the image ids sorted ascending; "
            "train = first n_train, val = the next n_val; each side sorted ascending")


def load_coco_json(annotation_file: Path | str) -> dict[str, Any]:
    """Read and sanity-check a COCO instances file; raise an error naming the file and the fix if it is unusable."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found. Download COCO with "
                                f"`python -m detr_nb_utils.data.download coco --root data/coco` or fix the path.")
    try:
        coco = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"annotation file {path} is not valid JSON ({e}); it is probably truncated or corrupt. "
                         f"Delete it and download it again.") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise ValueError(f"annotation file {path} is not a COCO instances file: no {missing}. "
                         f"Pass instances_val2017.json (or another COCO instances file).")
    ids = [im.get("id") for im in coco["images"]]
    if any(not isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"annotation file {path}: image ids must be unique integers. Use an unmodified COCO file.")
    orphans = {a.get("image_id") for a in coco["annotations"]} - set(ids)
    if orphans:
        raise ValueError(f"annotation file {path}: {len(orphans)} annotations point at images not listed "
                         f"(e.g. {sorted(orphans, key=str)[:5]}). Use an unmodified COCO file.")
    return coco


def select_ids(image_ids: list[int], n_train: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded choice of disjoint train/val image ids (each sorted); see ``_RNG_DOC`` for the exact procedure."""
    for name, value in (("n_train", n_train), ("n_val", n_val), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    if n_train + n_val == 0:
        raise ValueError("n_train + n_val is 0: ask for at least one image.")
    ids = np.array(sorted(image_ids), dtype=np.int64)
    if n_train + n_val > len(ids):
        raise ValueError(f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} images requested, but the "
                         f"annotation file has only {len(ids)}. Lower n_train/n_val.")
    perm = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[perm[:n_train]].tolist()), sorted(ids[perm[n_train:n_train + n_val]].tolist())


def _subset(coco: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    keep = set(ids)
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out["images"] = sorted((im for im in coco["images"] if im["id"] in keep), key=lambda im: im["id"])
    out["annotations"] = sorted((a for a in coco["annotations"] if a["image_id"] in keep), key=lambda a: a["id"])
    return out


def _stats(coco: dict[str, Any]) -> dict[str, Any]:
    """Counts for one side: images, annotations, boxes (non-crowd), crowd boxes, per-category boxes."""
    anns = coco["annotations"]
    boxes = [a for a in anns if not a.get("iscrowd", 0)]
    per_image = Counter(a["image_id"] for a in boxes)
    per_cat = Counter(a["category_id"] for a in boxes)
    return {
        "n_images": len(coco["images"]),
        "n_annotations": len(anns),
        "n_boxes": len(boxes),
        "n_crowd": len(anns) - len(boxes),
        "n_images_without_boxes": sum(1 for im in coco["images"] if per_image[im["id"]] == 0),
        "max_boxes_per_image": max(per_image.values(), default=0),
        f"n_images_over_{CROWDED_THRESHOLD}_boxes": sum(1 for n in per_image.values() if n > CROWDED_THRESHOLD),
        "per_category_boxes": {str(c["id"]): per_cat[c["id"]] for c in coco["categories"]},
    }


def _dumps(obj: Any, indent: int | None) -> bytes:
    seps = (",", ": ") if indent else (",", ":")
    return (json.dumps(obj, sort_keys=True, indent=indent, separators=seps, ensure_ascii=False) + "\n").encode()


def make_split(annotation_file: Path | str, out_dir: Path | str, n_train: int = 4000, n_val: int = 1000,
               seed: int = 42) -> dict[str, Any]:
    """Split a COCO instances file into ``train.json`` / ``val.json`` in ``out_dir``; return the manifest.

    Writes ``out_dir/{train,val}.json`` and ``out_dir/split_manifest.json`` (via temporary names, manifest last).
    Manifest keys: ``seed``, ``rng`` (the procedure), ``source`` (file name, sha256 and counts),
    ``train``/``val`` (``image_ids`` sorted, output ``sha256``, ``n_images``, ``n_annotations``, ``n_boxes``,
    ``n_crowd``, ``per_category_boxes``, ...), ``categories``. Same inputs -> byte-identical files.
    Used by ``notebooks/01_data_split.ipynb``.
    """
    annotation_file, out_dir = Path(annotation_file), Path(out_dir)
    coco = load_coco_json(annotation_file)
    train_ids, val_ids = select_ids([im["id"] for im in coco["images"]], n_train, n_val, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "seed": int(seed), "rng": _RNG_DOC, "n_train": int(n_train), "n_val": int(n_val),
        "source": {"file": annotation_file.name, "sha256": sha256_file(annotation_file), **_stats(coco)},
        "categories": [{k: c[k] for k in ("id", "name", "supercategory")} for c in coco["categories"]],
    }
    for side, ids in zip(SIDES, (train_ids, val_ids)):
        part = _subset(coco, ids)
        data = _dumps(part, indent=None)
        atomic.write_bytes(out_dir / f"{side}.json", data)
        manifest[side] = {"file": f"{side}.json", "sha256": hashlib.sha256(data).hexdigest(),
                          "image_ids": ids, **_stats(part)}
    atomic.write_bytes(out_dir / MANIFEST, _dumps(manifest, indent=1))
    return manifest


def load_manifest(manifest_or_dir: dict[str, Any] | Path | str) -> dict[str, Any]:
    """A manifest dict, given the dict itself, its file, or the split folder holding ``split_manifest.json``."""
    if isinstance(manifest_or_dir, dict):
        return manifest_or_dir
    path = Path(manifest_or_dir)
    path = path / MANIFEST if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"split manifest {path} not found. Run make_split (notebook 01) first.")
    return json.loads(path.read_text())


def split_diversity(manifest_or_dir: dict[str, Any] | Path | str) -> pd.DataFrame:
    """Per category: non-crowd instance counts and shares in the source, train and val.

    Returns a DataFrame indexed by ``category_id`` with columns ``name``, ``supercategory``, ``{source,train,val}``
    (instances), ``{source,train,val}_share`` (fraction of that side's boxes) and ``{train,val}_ratio`` (share over
    source share; 1.0 = preserved, NaN where the source has none). ``df.attrs`` holds
    ``val_images_over_50_boxes`` (images a 50-query model cannot fully detect). Used by notebook 01.
    """
    m = load_manifest(manifest_or_dir)
    df = pd.DataFrame(m["categories"]).set_index("id").rename_axis("category_id")
    for side in ("source", *SIDES):
        counts = pd.Series(m[side]["per_category_boxes"]).rename(int)
        df[side] = counts.reindex(df.index).fillna(0).astype(int)
        df[f"{side}_share"] = df[side] / max(int(df[side].sum()), 1)
    for side in SIDES:
        df[f"{side}_ratio"] = df[f"{side}_share"] / df["source_share"].replace(0, np.nan)
    key = f"n_images_over_{CROWDED_THRESHOLD}_boxes"
    df.attrs = {f"{side}_images_over_{CROWDED_THRESHOLD}_boxes": m[side][key] for side in SIDES}
    return df


def largest_share_gap(diversity: pd.DataFrame, side: str = "val") -> tuple[float, str]:
    """The largest gap, in points, between a category's share of ``side``'s boxes and its share of the source's, over
    the categories the source holds, and that category's name. ``diversity``: :func:`split_diversity`."""
    present = diversity[diversity["source"] > 0]
    gaps = 100 * (present[f"{side}_share"] - present["source_share"]).abs()
    return float(gaps.max()), str(present.loc[gaps.idxmax(), "name"])


def random_split_gaps(annotation_file: Path | str, n_train: int, n_val: int, n_splits: int = 200,
                      seed: int = 0) -> np.ndarray:
    """The yardstick of :func:`largest_share_gap`: its value for the val side of ``n_splits`` random splits of the
    same source images with the same sizes (each a permutation as :func:`select_ids` draws it, from
    ``numpy.random.default_rng(seed)``), ``[n_splits]`` points. A split whose gap sits inside this spread keeps the
    category mix as well as chance does. Used by notebook 01."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits!r}")
    coco = load_coco_json(annotation_file)
    ids = sorted(im["id"] for im in coco["images"])
    row = {i: k for k, i in enumerate(ids)}
    cats = sorted({a["category_id"] for a in coco["annotations"] if not a.get("iscrowd", 0)})
    col = {c: k for k, c in enumerate(cats)}
    boxes = np.zeros((len(ids), len(cats)))  # [images, categories]: non-crowd boxes
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            boxes[row[a["image_id"]], col[a["category_id"]]] += 1
    if n_train + n_val > len(ids):
        raise ValueError(f"n_train + n_val = {n_train + n_val} images, but {annotation_file} has only {len(ids)}")
    source = boxes.sum(0) / max(boxes.sum(), 1)
    rng = np.random.default_rng(seed)
    val = np.stack([boxes[rng.permutation(len(ids))[n_train:n_train + n_val]].sum(0) for _ in range(n_splits)])
    shares = val / np.maximum(val.sum(1, keepdims=True), 1)
    return 100 * np.abs(shares - source).max(1)


def verify_split(out_dir: Path | str, annotation_file: Path | str) -> dict[str, Any]:
    """Re-check a split folder against its manifest and source; return the manifest or raise listing every problem.

    Checks: the source's sha256; each output file's sha256 and image ids against the manifest; no overlap; the
    seed still selects the same ids; each side holds every source annotation of its images and no other.
    Used by notebooks 01 and 03 (before training on a split).
    """
    out_dir = Path(out_dir)
    m = load_manifest(out_dir)
    problems: list[str] = []
    src_sha = sha256_file(annotation_file)
    if src_sha != m["source"]["sha256"]:
        problems.append(f"{annotation_file} has sha256 {src_sha[:12]}..., the split was made from "
                        f"{m['source']['sha256'][:12]}... (a different annotation file)")
    coco = load_coco_json(annotation_file)
    expected = dict(zip(SIDES, select_ids([im["id"] for im in coco["images"]], m["n_train"], m["n_val"], m["seed"])))
    src_anns: dict[int, set[int]] = {}
    for a in coco["annotations"]:
        src_anns.setdefault(a["image_id"], set()).add(a["id"])
    for side in SIDES:
        path = out_dir / m[side]["file"]
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        if sha256_file(path) != m[side]["sha256"]:
            problems.append(f"{path} was modified after the split was written (sha256 differs from the manifest)")
        part = load_coco_json(path)
        ids = sorted(im["id"] for im in part["images"])
        if ids != m[side]["image_ids"]:
            problems.append(f"{path}: image ids differ from the manifest's {side} ids")
        if m[side]["image_ids"] != expected[side]:
            problems.append(f"manifest {side} ids are not what seed {m['seed']} selects from {annotation_file}")
        want = set().union(*(src_anns.get(i, set()) for i in ids)) if ids else set()
        got = {a["id"] for a in part["annotations"]}
        if got != want:
            problems.append(f"{path}: {len(want - got)} source annotations of its images missing, "
                            f"{len(got - want)} extra")
    overlap = set(m["train"]["image_ids"]) & set(m["val"]["image_ids"])
    if overlap:
        problems.append(f"train and val share {len(overlap)} images, e.g. {sorted(overlap)[:5]}")
    if problems:
        raise ValueError(f"split in {out_dir} does not verify:\n  - " + "\n  - ".join(problems)
                         + "\nRe-create it with make_split(...) from the original annotation file.")
    return m
