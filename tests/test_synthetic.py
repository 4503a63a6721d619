"""synthetic.py: a valid COCO file with real category ids, crowd and empty images; deterministic, idempotent, fast."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detr_nb_utils.data.categories import COCO_CATEGORIES
from detr_nb_utils.data.coco import CocoDetection
from detr_nb_utils.data.synthetic import SHAPES, make_synthetic_coco


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("s") / "synthetic")


def test_is_a_valid_coco_file_with_real_categories(synth):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth.annotations))
    assert len(coco.getImgIds()) == 24 and len(coco.getCatIds()) == 80
    labels = {a["category_id"] for a in coco.dataset["annotations"]}
    assert labels == set(SHAPES) == {1, 3, 18, 44, 62}  # non-contiguous real ids
    for image_id, info in coco.imgs.items():
        with Image.open(synth.images / info["file_name"]) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (224, 160))
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        info = coco.imgs[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
        assert a["area"] > 0 and a["segmentation"]


def test_crowd_regions_and_empty_images(synth):
    coco = json.loads(synth.annotations.read_text())
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert 1 <= len(crowd) <= 5
    for a in crowd:
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert mask_utils.toBbox(rle).tolist() == a["bbox"] and mask_utils.area(rle) == a["area"]
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert [im["id"] for im in coco["images"] if not per_image[im["id"]]] == [13, 24]
    ds = CocoDetection(synth.annotations, synth.images)
    assert ds.num_crowd_excluded == len(crowd)
    assert len(ds[12][1]["boxes"]) == 0


def test_boxes_cover_shapes_of_their_category_colour(synth):
    coco = json.loads(synth.annotations.read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    hits = total = 0
    for a in coco["annotations"]:
        if a["iscrowd"]:
            continue
        x, y, w, h = (int(v) for v in a["bbox"])
        pixel = np.asarray(Image.open(synth.images / names[a["image_id"]]))[y + h // 2, x + w // 2]
        hits += np.abs(pixel.astype(int) - SHAPES[a["category_id"]][1]).max() < 40
        total += 1
    assert hits >= 0.9 * total


def test_categories_table_matches_real_coco(coco_sample):
    real = json.loads((coco_sample / "annotations" / "instances_val2017_sample.json").read_text())["categories"]
    assert COCO_CATEGORIES == real


def test_deterministic_idempotent_and_fast(synth, tmp_path):
    start = time.perf_counter()
    again = make_synthetic_coco(tmp_path / "a")
    assert time.perf_counter() - start < 4.0  # ~0.2 s here; budget 2 s on a slow machine, with slack
    for path in sorted(synth.root.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again.root / path.relative_to(synth.root)).read_bytes(), path
    before = again.annotations.stat().st_mtime_ns
    assert make_synthetic_coco(tmp_path / "a") == again
    assert again.annotations.stat().st_mtime_ns == before
    other = make_synthetic_coco(tmp_path / "b", seed=1)
    assert other.annotations.read_bytes() != again.annotations.read_bytes()
    with pytest.raises(FileExistsError, match="delete it or choose another out_dir"):
        make_synthetic_coco(tmp_path / "a", n_images=10)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
