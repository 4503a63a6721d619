"""detr_nb_utils.data.validate: every kind of broken COCO dataset gives one named DatasetError before training; real
COCO (borders a fraction of a pixel out included) and the demo's synthetic data pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from bad_images import NON_UTF8_NAME, bmp_named_jpg, huge_header_jpeg, png16, tiff, truncated_png
from detr_nb_utils.data.coco import CocoDetection, build_dataset, collate_fn
from detr_nb_utils.data.images import ImageReadError
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.data.validate import KINDS, SHOWN, DatasetError, DatasetSummary, validate_coco_dataset
from detr_nb_utils.models.detr import TINY_DETR, build_detr
from detr_nb_utils.models.loss import SetCriterion
from detr_nb_utils.training.coco_eval import run_cocoeval
from detr_nb_utils.training.engine import build_optimizer, train_one_epoch

W, H = 40, 30  # every tiny test image: width, height


def _jpeg(path: Path, w: int = W, h: int = H, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _image(i: int, w: int = W, h: int = H) -> dict:
    return {"id": i, "file_name": f"img_{i}.jpg", "width": w, "height": h}


def _ann(i: int, image_id: int, bbox: list, category_id: int = 1, iscrowd: int = 0) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd,
            "area": 1.0}


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[dict, Path]:
    """A valid dataset's JSON (to break, then write with :func:`_validate`) and its image folder: 3 images (image 3
    without annotations), 2 categories, 3 annotations (one a crowd region with a zero-area box, one reaching 0.9 px
    beyond the right and bottom borders, as real COCO boxes do)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for i in (1, 2, 3):
        _jpeg(image_dir / f"img_{i}.jpg", seed=i)
    data = {"images": [_image(i) for i in (1, 2, 3)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "traffic light"}],
            "annotations": [_ann(10, 1, [2, 3, 10, 8]), _ann(11, 1, [30.5, 20.3, 10.4, 10.6], category_id=5),
                            _ann(12, 2, [5, 5, 0, 0], iscrowd=1)]}
    return data, image_dir


def _validate(data: dict, image_dir: Path, **kwargs) -> DatasetSummary:
    path = image_dir.parent / "annotations.json"
    path.write_text(json.dumps(data))
    return validate_coco_dataset(path, image_dir, **kwargs)


def _error(data: dict, image_dir: Path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        _validate(data, image_dir, **kwargs)
    return info.value


def test_valid_dataset_passes_with_right_counts(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    summary = _validate(data, image_dir, progress=True)
    annotated = {a["image_id"] for a in data["annotations"]}
    assert (summary.images, summary.annotations, summary.categories) == (
        len(data["images"]), len(data["annotations"]), len(data["categories"]))
    assert summary.crowd == sum(bool(a["iscrowd"]) for a in data["annotations"]) > 0
    assert summary.images_without_annotations == sum(im["id"] not in annotated for im in data["images"]) > 0
    assert summary.image_dir == image_dir and summary.annotation_file.name == "annotations.json"
    frame = summary.to_frame()
    assert list(frame.index) == ["annotation_file", "image_dir", "images", "annotations", "categories", "crowd",
                                 "images_without_annotations", "areas_filled"]
    assert summary.areas_filled == 0
    assert frame.loc["crowd", "value"] == summary.crowd and frame.loc["images", "value"] == summary.images


def _del(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _add(key: str, *entries: dict) -> Callable[[dict], None]:
    return lambda d: d[key].extend(entries)


def _set_image(i: int, **fields) -> Callable[[dict], None]:
    return lambda d: d["images"][i].update(fields)


# (id, how to break the valid dataset, kind, how many offenders, the count as the message says it, an offender's name)
BREAKS = [
    ("key missing", _del("annotations"), "top-level keys", 1, "1 top-level key", "'annotations' missing"),
    ("key not a list", lambda d: d.update(categories={"1": "cat"}), "top-level keys", 1, "1 top-level key",
     "'categories' is dict"),
    ("no images", lambda d: d.update(images=[], annotations=[]), "no images", 1, "1 dataset", "no images"),
    ("no categories", lambda d: d.update(categories=[]), "no categories", 1, "1 dataset", "no categories"),
    ("bad images", lambda d: (d["images"][1].update(width=0), d["images"][2].update(file_name=7, height=2.5)),
     "bad images", 2, "2 images", "image 3 (7): file_name=7, height=2.5"),
    ("image not an object", _add("images", ["img_9.jpg"]), "bad images", 1, "1 image", "images[3]"),
    ("duplicate image ids", _add("images", {**_image(2), "file_name": "other.jpg"}), "duplicate image ids", 1,
     "1 image id", "image id 2 used 2 times (img_2.jpg, other.jpg)"),
    ("bad categories", _add("categories", {"id": "7", "name": "dog"}, {"id": 8, "name": " "}), "bad categories", 2,
     "2 categories", "name=' '"),
    ("duplicate category ids", _add("categories", {"id": 5, "name": "dog"}), "duplicate category ids", 1,
     "1 category id", "category id 5"),
    ("duplicate category names", _add("categories", {"id": 9, "name": "Traffic_Light"}, {"id": 10, "name": "CAT"},
                                      {"id": 11, "name": "traffic-light"}, {"id": 12, "name": "TrafficLight"}),
     "duplicate category names", 2, "2 sets", "'Traffic_Light' (id 9)"),
    ("bad annotations", _add("annotations", _ann(20, 1, [1, 2, 3]), _ann(21, 1, [1, 2, float("nan"), 4]),
                             _ann(22, 1, [1, 2, 3, 4], category_id="1"), _ann(23, 1, [1, 2, True, 4])),
     "bad annotations", 4, "4 annotations", "annotation 22: category_id='1'"),
    ("duplicate annotation ids", _add("annotations", _ann(11, 2, [1, 1, 5, 5])), "duplicate annotation ids", 1,
     "1 annotation id", "annotation id 11 used 2 times"),
    ("unknown images", _add("annotations", _ann(17, 999, [1, 1, 5, 5]), _ann(18, 998, [1, 1, 5, 5])),
     "unknown images", 2, "2 annotations", "annotation 17 -> image_id 999"),
    ("unknown categories", _add("annotations", _ann(17, 1, [1, 1, 5, 5], category_id=77)), "unknown categories", 1,
     "1 annotation", "annotation 17 (image 1) -> category_id 77"),
    ("empty boxes", _add("annotations", _ann(30, 1, [1, 1, 0, 5]), _ann(31, 2, [1, 1, 5, -1]),
                         _ann(32, 2, [1, 1, 0, 0], iscrowd=1)), "empty boxes", 2, "2 non-crowd boxes",
     "annotation 31 on image 2 (img_2.jpg, 40x30)"),
    ("boxes outside images", _add("annotations", _ann(40, 1, [-1.5, 0, 5, 5]), _ann(41, 2, [30, 0, 11.5, 5]),
                                  _ann(42, 3, [0, 20, 5, 11.2], iscrowd=1), _ann(43, 3, [0, -1.01, 5, 5])),
     "boxes outside images", 4, "4 boxes", "annotation 41 on image 2 (img_2.jpg, 40x30): bbox [30, 0, 11.5, 5]"),
    ("size mismatches", _set_image(0, width=W + 1), "size mismatches", 1, "1 image",
     f"image 1 (img_1.jpg): file is {W}x{H}, annotated {W + 1}x{H}"),
]


@pytest.mark.parametrize("name,break_it,kind,count,said,offender", BREAKS, ids=[b[0] for b in BREAKS])
def test_each_problem_kind_is_named(dataset: tuple[dict, Path], name: str, break_it: Callable[[dict], None],
                                    kind: str, count: int, said: str, offender: str) -> None:
    data, image_dir = dataset
    break_it(data)
    err = _error(data, image_dir)
    assert kind in err.problems and len(err.problems[kind]) == count, err.problems
    line = next(line for line in str(err).splitlines() if line.startswith(f"  - {count} ") and KINDS[kind][1] in line)
    assert line.startswith(f"  - {said} ") and offender in line and line.endswith(KINDS[kind][2]), line
    assert err.path.name == "annotations.json" and isinstance(err, ValueError)


def test_in_tolerance_and_crowd_boxes_pass_and_crowd_is_not_empty(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    data["annotations"] += [_ann(50, 2, [-0.99, -0.5, W + 1.9, H + 1.4]), _ann(51, 3, [3, 3, 0, 0], iscrowd=1)]
    assert _validate(data, image_dir).annotations == 5
    data["annotations"][-1]["iscrowd"] = 0
    assert _error(data, image_dir).problems == {"empty boxes": ["annotation 51 on image 3 (img_3.jpg, 40x30): "
                                                                "bbox [3, 3, 0, 0]"]}


def test_missing_and_undecodable_files(dataset: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, image_dir = dataset
    (image_dir / "img_2.jpg").unlink()
    (image_dir / "img_3.jpg").write_text("not a picture")
    big = image_dir / "big.jpg"  # a JPEG cut in half: opens (the header is there) but does not decode
    _jpeg(big, 320, 240, seed=4)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    data["images"].append({**_image(4, 320, 240), "file_name": "big.jpg"})
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as a notebook may set it: still reported
    err = _error(data, image_dir)
    assert set(err.problems) == {"missing files", "unreadable images"}
    assert err.problems["missing files"] == [f"image 2 (img_2.jpg): no file {image_dir / 'img_2.jpg'}"]
    unreadable = err.problems["unreadable images"]
    assert len(unreadable) == 2 and unreadable[0].startswith("image 3 (img_3.jpg)")
    assert unreadable[1].startswith("image 4 (big.jpg)") and "truncated" in unreadable[1]
    assert "1 image file missing" in str(err) and "2 image files not readable" in str(err)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    assert _validate(data, image_dir, check_images=False).images == 4  # the files are not read


def test_missing_image_folder(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    err = _error(data, image_dir.parent / "nowhere")
    assert list(err.problems) == ["missing image folder"] and "nowhere (for 3 images)" in str(err)


@pytest.mark.parametrize("content,reason", [(None, "does not exist"), ("{'images': []", "is not JSON"),
                                            ("[1, 2]", "is a JSON list, not an object")])
def test_unusable_annotation_file(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "instances.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError) as info:
        validate_coco_dataset(path, tmp_path)
    assert list(info.value.problems) == ["annotation file"] and info.value.path == path
    assert f"{path} {reason}" in str(info.value)


def test_all_problems_in_one_error_first_five_shown(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    data["annotations"] += [_ann(100 + k, 900 + k, [1, 1, 5, 5]) for k in range(SHOWN + 2)]
    data["annotations"].append(_ann(200, 1, [1, 1, 0, 5]))
    data["categories"].append({"id": 6, "name": "Cat"})
    data["images"][2]["height"] = -H
    (image_dir / "img_2.jpg").unlink()
    err = _error(data, image_dir)
    assert list(err.problems) == ["bad images", "duplicate category names", "unknown images", "empty boxes",
                                  "missing files"]  # in KINDS order
    assert len(err.problems["unknown images"]) == SHOWN + 2
    text = str(err)
    assert f"{SHOWN + 2} annotations pointing at an unknown image" in text
    assert f"annotation {100 + SHOWN - 1} -> image_id {900 + SHOWN - 1}" in text
    assert f"annotation {100 + SHOWN} ->" not in text and "(2 more in .problems['unknown images'])" in text
    assert "image 3 (img_3.jpg): height=-30" in text and "annotation 200 on image 1" in text
    assert "image 2 (img_2.jpg)" in text and "'cat' (id 1) ~ 'Cat' (id 6)" in text


def _check_coco(root: Path) -> dict:
    """Validate a real COCO sample (every image decoded) and check the summary against its JSON; the JSON."""
    annotations = root / "annotations" / "instances_val2017_sample.json"
    data = json.loads(annotations.read_text())
    summary = validate_coco_dataset(annotations, root / "images")
    assert (summary.images, summary.annotations, summary.categories) == (
        len(data["images"]), len(data["annotations"]), len(data["categories"]))
    assert summary.crowd == sum(a["iscrowd"] for a in data["annotations"])
    return data


def test_committed_coco_sample_validates(coco_sample: Path) -> None:
    _check_coco(coco_sample)


def test_shared_coco_sample_validates(shared_coco_sample: Path) -> None:
    _check_coco(shared_coco_sample)


def test_synthetic_demo_data_validates(tmp_path: Path) -> None:
    s = make_synthetic_coco(tmp_path / "syn", n_images=12, seed=0)
    summary = validate_coco_dataset(s.annotations, s.images)
    data = json.loads(s.annotations.read_text())
    assert summary.images == len(data["images"]) == 12 and summary.crowd > 0
    assert summary.images_without_annotations == 2  # images n//2+1 and n (make_synthetic_coco's docstring)


# ---- what would fail in training is refused here; what validates, trains ---------------------------------------


def test_file_names_leading_outside_the_image_folder_are_refused(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    outside = _jpeg_at(image_dir.parent / "secret.jpg")
    (image_dir / "link.jpg").symlink_to(outside)
    data["images"] += [{**_image(4), "file_name": "../secret.jpg"}, {**_image(5), "file_name": str(outside)},
                       {**_image(6), "file_name": "link.jpg"}]
    for check_images in (True, False):
        err = _error(data, image_dir, check_images=check_images)
        assert list(err.problems) == ["files outside the image folder"] and len(err.problems[
            "files outside the image folder"]) == 3
        assert "image 4 (../secret.jpg): its file_name '../secret.jpg' leads outside the image folder" in str(err)
    with pytest.raises(ImageReadError, match="leads outside the image folder"):  # nor does training read them
        CocoDetection(image_dir.parent / "annotations.json", image_dir)[3]


def _jpeg_at(path: Path) -> Path:
    _jpeg(path)
    return path


def test_boxes_that_look_normalised_are_refused(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    for a in data["annotations"]:
        a["bbox"] = [a["bbox"][0] / W, a["bbox"][1] / H, a["bbox"][2] / W, a["bbox"][3] / H]
    err = _error(data, image_dir)
    assert list(err.problems) == ["normalised boxes"] and len(err.problems["normalised boxes"]) == 2  # the crowd box
    assert "multiply x and w by the image's width" in str(err)  # is empty, so not counted
    tiny_image = {"images": [_image(1, 2, 2)], "categories": data["categories"],
                  "annotations": [_ann(1, 1, [0.5, 0.5, 1, 1])]}  # a 2-px image: a 1-px box is a real box
    _jpeg(image_dir / "img_1.jpg", 2, 2)
    assert _validate(tiny_image, image_dir).annotations == 1


def test_a_missing_area_is_filled_from_the_box_and_evaluation_runs(dataset: tuple[dict, Path]) -> None:
    data, image_dir = dataset
    for a in data["annotations"][:2]:
        del a["area"]
    summary = _validate(data, image_dir)
    assert summary.areas_filled == 2 and summary.to_frame().loc["areas_filled", "value"] == 2
    ds = CocoDetection(image_dir.parent / "annotations.json", image_dir)
    assert ds.num_areas_filled == 2 and ds.coco.anns[10]["area"] == 10 * 8
    truth = np.array([[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in data["annotations"]
                      if not a["iscrowd"]], dtype=np.float64)
    precision = run_cocoeval(ds.coco, truth, ds.ids).eval["precision"]  # COCOeval reads every ground truth's area
    assert precision[0, :, :, 0, -1].min() == pytest.approx(1.0)  # every box found: AP 1 at IoU 0.5
    data["annotations"][2]["area"] = "big"
    assert _error(data, image_dir).problems == {"bad annotations": ["annotation 12: area='big'"]}


def test_unreadable_images_are_refused_with_the_readers_reason(dataset: tuple[dict, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data, image_dir = dataset
    truncated_png(image_dir / "cut.png", W, H)
    huge_header_jpeg(image_dir / "huge.jpg")
    Image.fromarray(np.ones((H, W), dtype=np.float32)).save(image_dir / "float.tif")
    data["images"] += [{**_image(4), "file_name": "cut.png"}, {**_image(5), "file_name": "huge.jpg"},
                       {**_image(6), "file_name": "float.tif"}]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    unreadable = _error(data, image_dir).problems["unreadable images"]
    assert [u.split(":")[0] for u in unreadable] == ["image 4 (cut.png)", "image 5 (huge.jpg)", "image 6 (float.tif)"]
    assert "image file is truncated" in unreadable[0] and "header says 30000 x 30000" in unreadable[1]


def test_what_validates_trains_tiff_bmp_named_jpg_16_bit_palette_and_non_utf8_names(tmp_path: Path) -> None:
    """Files torchvision's decoder could not read (so a dataset validated by PIL crashed inside an epoch) are read
    by the one reader in validation and in training alike: the dataset validates, then a training step runs."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    names = {1: "a.tif", 2: "b.jpg", 3: "c.png", 4: "d.png", 5: NON_UTF8_NAME}
    tiff(image_dir / names[1], 64, 48, seed=1)
    bmp_named_jpg(image_dir / names[2], 64, 48, seed=2)
    png16(image_dir / names[3], 64, 48)
    Image.fromarray(np.asarray(Image.open(tiff(tmp_path / "p.tif", 64, 48, seed=3)))).convert("P").save(
        image_dir / names[4])
    _jpeg(image_dir / names[5], 64, 48, seed=5)
    data = {"images": [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in names.items()],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [_ann(10 + i, i, [8, 6, 30, 20]) for i in names]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))  # the non-UTF-8 name goes into the JSON as Python spells it
    assert validate_coco_dataset(path, image_dir).images == 5
    dataset = build_dataset(path, image_dir, "train", scales=(48,), max_size=64, random_crop=False)
    model = build_detr(**TINY_DETR, num_classes=2, dec_layers=1, num_queries=5)
    cfg = SimpleNamespace(precision="fp32", channels_last=False, progress=False, clip_max_norm=0.1, batch_size=5,
                          lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4)
    stats = train_one_epoch(model, SetCriterion(num_classes=2, dec_layers=1),
                            DataLoader(dataset, batch_size=5, collate_fn=collate_fn), build_optimizer(model, cfg),
                            "cpu", 1, cfg)
    assert stats["steps"] == 1 and np.isfinite(stats["loss"])
