"""split.py on the real COCO sample in tests/data (24 val2017 images): counts, completeness, no overlap, determinism,
manifest, errors. The sample's counts are read from its annotation file, never typed in."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from detr_nb_utils.data.split import largest_share_gap, make_split, random_split_gaps, split_diversity, verify_split

N_TRAIN = 16  # the full split: 16 train images, the rest of the sample val
SMALL = {"n_train": 14, "n_val": 6}  # a split leaving images out


@pytest.fixture(scope="module")
def ann_file(coco_sample) -> Path:
    return coco_sample / "annotations" / "instances_val2017_sample.json"


@pytest.fixture(scope="module")
def source(ann_file) -> dict:
    return json.loads(ann_file.read_text())


@pytest.fixture(scope="module")
def full_split(ann_file, source, tmp_path_factory):
    """Every sample image used: N_TRAIN train, the others val."""
    out = tmp_path_factory.mktemp("split")
    return out, make_split(ann_file, out, n_train=N_TRAIN, n_val=len(source["images"]) - N_TRAIN, seed=42)


def test_counts_no_overlap_and_complete_annotations(full_split, source):
    out, manifest = full_split
    src_anns = {}
    for a in source["annotations"]:
        src_anns.setdefault(a["image_id"], []).append(a)
    sides = {side: json.loads((out / f"{side}.json").read_text()) for side in ("train", "val")}
    ids = {side: {im["id"] for im in coco["images"]} for side, coco in sides.items()}
    assert (len(ids["train"]), len(ids["val"])) == (N_TRAIN, len(source["images"]) - N_TRAIN)
    assert not ids["train"] & ids["val"]
    assert ids["train"] | ids["val"] == {im["id"] for im in source["images"]}
    for side, coco in sides.items():
        assert sorted(ids[side]) == manifest[side]["image_ids"]
        want = sorted((a for i in ids[side] for a in src_anns.get(i, [])), key=lambda a: a["id"])
        assert coco["annotations"] == want  # every annotation of its images, unchanged, original ids
        assert coco["categories"] == source["categories"] and len(coco["categories"]) == 80
        assert coco["info"] == source["info"] and coco["licenses"] == source["licenses"]
    assert len(sides["train"]["annotations"]) + len(sides["val"]["annotations"]) == len(source["annotations"])


def test_outputs_load_in_pycocotools(full_split):
    out, manifest = full_split
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "val.json"))
    assert sorted(coco.getImgIds()) == manifest["val"]["image_ids"]


def test_manifest_contents(full_split, ann_file, source):
    out, manifest = full_split
    assert json.loads((out / "split_manifest.json").read_text()) == manifest
    assert manifest["seed"] == 42
    assert manifest["source"]["sha256"] == hashlib.sha256(ann_file.read_bytes()).hexdigest()
    src = manifest["source"]
    n_crowd = sum(1 for a in source["annotations"] if a["iscrowd"])
    assert n_crowd > 0, "the sample should hold crowd annotations, so that n_boxes differs from n_annotations"
    assert (src["n_images"], src["n_annotations"], src["n_crowd"]) == \
        (len(source["images"]), len(source["annotations"]), n_crowd)
    assert src["n_boxes"] == len(source["annotations"]) - n_crowd
    for key in ("n_images", "n_annotations", "n_boxes", "n_crowd"):
        assert manifest["train"][key] + manifest["val"][key] == src[key], key
    per_cat = Counter(a["category_id"] for a in source["annotations"] if not a["iscrowd"])
    assert {int(k): v for k, v in src["per_category_boxes"].items() if v} == dict(per_cat)
    for c in src["per_category_boxes"]:
        assert manifest["train"]["per_category_boxes"][c] + manifest["val"]["per_category_boxes"][c] == \
            src["per_category_boxes"][c]
    assert manifest["train"]["sha256"] == hashlib.sha256((out / "train.json").read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_files(ann_file, tmp_path):
    a = make_split(ann_file, tmp_path / "a", **SMALL, seed=7)
    b = make_split(ann_file, tmp_path / "b", **SMALL, seed=7)
    for name in ("train.json", "val.json", "split_manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    c = make_split(ann_file, tmp_path / "c", **SMALL, seed=8)
    assert c["val"]["image_ids"] != a["val"]["image_ids"]
    assert a == b
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_verify_split_accepts_good_and_names_tampering(ann_file, tmp_path):
    out = tmp_path / "s"
    make_split(ann_file, out, **SMALL, seed=1)
    assert verify_split(out, ann_file)["seed"] == 1

    val = json.loads((out / "val.json").read_text())
    val["annotations"] = val["annotations"][1:]
    (out / "val.json").write_text(json.dumps(val))
    with pytest.raises(ValueError, match=r"val\.json.*modified") as err:
        verify_split(out, ann_file)
    assert "1 source annotations of its images missing" in str(err.value)

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(ann_file.read_text()), indent=2))
    make_split(ann_file, out, **SMALL, seed=1)
    with pytest.raises(ValueError, match="different annotation file"):
        verify_split(out, other)


def test_verify_split_catches_overlap_and_wrong_seed(ann_file, tmp_path):
    out = tmp_path / "s"
    make_split(ann_file, out, **SMALL, seed=1)
    manifest = json.loads((out / "split_manifest.json").read_text())
    manifest["seed"] = 2
    manifest["val"]["image_ids"][0] = manifest["train"]["image_ids"][0]
    (out / "split_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as err:
        verify_split(out, ann_file)
    msg = str(err.value)
    assert "share 1 images" in msg and "seed 2" in msg and "val.json: image ids differ" in msg


def test_more_images_than_the_file_holds_is_named(ann_file, source, tmp_path):
    n = len(source["images"])
    with pytest.raises(ValueError, match=rf"n_train \+ n_val = {n - 4} \+ 5 = {n + 1} .* only {n}\b"):
        make_split(ann_file, tmp_path, n_train=n - 4, n_val=5)
    assert list(tmp_path.iterdir()) == []
    make_split(ann_file, tmp_path / "all", n_train=n - 5, n_val=5)  # exactly every image is fine


@pytest.mark.parametrize("n_train, n_val, match", [
    (-1, 5, "n_train must be a non-negative integer"),
    (10, 2.5, "n_val must be a non-negative integer"),
])
def test_bad_counts_are_named(ann_file, tmp_path, n_train, n_val, match):
    with pytest.raises(ValueError, match=match):
        make_split(ann_file, tmp_path, n_train=n_train, n_val=n_val)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_or_invalid_annotation_files(ann_file, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json.*download"):
        make_split(missing, tmp_path / "o")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(ann_file.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.json is not valid JSON"):
        make_split(truncated, tmp_path / "o")
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"not_coco.json is not a COCO instances file.*annotations"):
        make_split(not_coco, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_split_diversity_table(full_split, source):
    out, manifest = full_split
    df = split_diversity(out)
    assert len(df) == 80 and df.index.name == "category_id" and 90 in df.index
    for side in ("source", "train", "val"):
        assert df[f"{side}_share"].sum() == pytest.approx(1.0)
    assert (df["train"] + df["val"] == df["source"]).all()
    person = sum(1 for a in source["annotations"] if a["category_id"] == 1 and not a["iscrowd"])
    assert df.loc[1, "name"] == "person" and df.loc[1, "source"] == person
    assert df.attrs["val_images_over_50_boxes"] == manifest["val"]["n_images_over_50_boxes"]


def test_random_split_gaps_measure_the_split_as_make_split_draws_it(ann_file, tmp_path):
    """The yardstick's first draw is the split make_split makes with the same seed, so its gap is the split's."""
    manifest = make_split(ann_file, tmp_path, seed=7, **SMALL)
    gaps = random_split_gaps(ann_file, n_splits=50, seed=7, **SMALL)
    gap, name = largest_share_gap(split_diversity(manifest))
    assert gaps.shape == (50,) and gaps[0] == pytest.approx(gap)
    assert name in {c["name"] for c in manifest["categories"]}
    assert len(set(gaps.round(6))) > 1  # the splits differ
    assert (random_split_gaps(ann_file, n_splits=50, seed=7, **SMALL) == gaps).all()


def test_random_split_gaps_on_a_hand_built_source(tmp_path):
    """Ten images of one box each, half of category 1: a val side of two images holds one of each (gap 0) or two
    of one (gap 50 points)."""
    coco = {"images": [{"id": i, "width": 10, "height": 10, "file_name": f"{i}.jpg"} for i in range(10)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0} for i in range(10)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "source.json"
    path.write_text(json.dumps(coco))
    gaps = random_split_gaps(path, n_train=8, n_val=2, n_splits=200, seed=0)
    assert set(gaps.round(6)) == {0.0, 50.0}
    with pytest.raises(ValueError, match="only 10"):
        random_split_gaps(path, n_train=8, n_val=3)
    with pytest.raises(ValueError, match="n_splits"):
        random_split_gaps(path, 8, 2, n_splits=0)
