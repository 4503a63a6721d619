"""data.py on real COCO images: target contract, transforms keep boxes right, collate masks, bad files named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2

from detr_nb_utils.data.coco import CocoDetection, build_dataset, collate_fn, resolve_coco_layout
from detr_nb_utils.data.images import ImageReadError
from detr_nb_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomSizeCrop, make_transforms

PUBLISHED_SCALES = tuple(range(480, 801, 32))  # the published train scales: shorter side 480, 512, ..., 800
SMALL = dict(scales=(224, 256), max_size=400, crop_resize=(200, 250), crop_size=(120, 220), val_size=256)


@pytest.fixture(scope="module")
def sample(coco_sample) -> tuple[Path, Path]:
    return coco_sample / "annotations" / "instances_val2017_sample.json", coco_sample / "images"


@pytest.fixture(scope="module")
def raw(sample) -> CocoDetection:
    """No transforms: uint8 images at their stored size."""
    return CocoDetection(*sample)


@pytest.fixture(scope="module")
def source(sample) -> dict:
    return json.loads(sample[0].read_text())


def pixel_xyxy(target: dict) -> torch.Tensor:
    h, w = target["size"].tolist()
    return box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])


def published_size(h: int, w: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """(h, w) the published DETR resize gives an h x w image for shorter side ``size``: ``resize`` ->
    ``get_size_with_aspect_ratio`` in facebookresearch/detr datasets/transforms.py, restated here on its own."""
    if max_size is not None and max(w, h) / min(w, h) * size > max_size:
        size = round(max_size * min(w, h) / max(w, h))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


@pytest.fixture
def crop_calls(monkeypatch) -> list[dict]:
    """Records every ``RandomSizeCrop`` call: its input (size, boxes, labels), its window and its output."""
    calls: list[dict] = []
    make_params, forward = RandomSizeCrop.make_params, RandomSizeCrop.forward

    def recording_make_params(self, flat_inputs):
        calls[-1]["window"] = make_params(self, flat_inputs)
        return calls[-1]["window"]

    def recording_forward(self, image, target):
        calls.append({"size_in": tuple(image.shape[-2:]), "boxes_in": target["boxes"].as_subclass(torch.Tensor),
                      "labels_in": target["labels"]})
        image, target = forward(self, image, target)
        calls[-1].update(size_out=tuple(image.shape[-2:]), boxes_out=target["boxes"].as_subclass(torch.Tensor),
                         labels_out=target["labels"])
        return image, target

    monkeypatch.setattr(RandomSizeCrop, "make_params", recording_make_params)
    monkeypatch.setattr(RandomSizeCrop, "forward", recording_forward)
    return calls


def image_and_target(h: int, w: int, boxes: list[list[float]]) -> tuple[tv_tensors.Image, dict]:
    """A black h x w uint8 image and a target with XYXY pixel ``boxes``, labelled 1, 2, ..."""
    return tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8)), {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                          canvas_size=(h, w)),
        "labels": torch.arange(1, len(boxes) + 1)}


def anns_by_image(source: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in source["annotations"]:
        out.setdefault(a["image_id"], []).append(a)
    return out


def test_untransformed_targets_follow_the_contract(raw, source):
    anns = anns_by_image(source)
    sizes = {im["id"]: (im["height"], im["width"]) for im in source["images"]}

    def has_area(a: dict) -> bool:  # the COCO box clamped to its image keeps a positive width and height
        (h, w), (x, y, bw, bh) = sizes[a["image_id"]], a["bbox"]
        return min(x + bw, w) > max(x, 0) and min(y + bh, h) > max(y, 0)

    crowd = sum(bool(a["iscrowd"]) for a in source["annotations"])
    kept = sum(has_area(a) for a in source["annotations"] if not a["iscrowd"])
    assert len(raw) == len(source["images"]) and crowd > 0
    assert raw.stats() == {"images": len(source["images"]), "boxes": kept, "crowd_excluded": crowd,
                           "degenerate_dropped": len(source["annotations"]) - crowd - kept,
                           "dropped_by_transforms": 0}
    crowd_images = {a["image_id"] for a in source["annotations"] if a["iscrowd"]}
    crowd_indices = [i for i, image_id in enumerate(raw.ids) if image_id in crowd_images]
    checked_crowd = 0
    for index in sorted({*range(0, len(raw), 9), *crowd_indices[:4]}):
        image, t = raw[index]
        image_id = raw.ids[index]
        info = next(im for im in source["images"] if im["id"] == image_id)
        assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert t["image_id"].item() == image_id and t["image_id"].dtype == torch.int64
        assert t["orig_size"].tolist() == t["size"].tolist() == [info["height"], info["width"]]
        mine = [a for a in anns.get(image_id, []) if not a["iscrowd"]]
        assert t["labels"].tolist() == [a["category_id"] for a in mine]  # original ids, crowd excluded
        want = torch.tensor([a["bbox"] for a in mine], dtype=torch.float32).reshape(-1, 4)
        got = box_convert(pixel_xyxy(t), "xyxy", "xywh")
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
        checked_crowd += image_id in crowd_images
    assert checked_crowd > 0


def test_labels_are_original_category_ids(raw):
    labels = set(torch.cat([torch.from_numpy(raw._targets[i][1]) for i in raw.ids]).tolist())
    assert max(labels) > 80  # ids run to 90 with gaps: no 0..79 remapping
    assert labels <= {c["id"] for c in raw.coco.dataset["categories"]}


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_box_stays_inside_its_image(sample, split):
    ds = build_dataset(*sample, split, **SMALL)
    torch.manual_seed(0)
    kept = 0
    for draw in range(3):
        for index in range(draw, len(ds), 5):
            before = ds.num_dropped_by_transforms
            image, t = ds[index]
            n_orig = len(ds._targets[ds.ids[index]][0])
            assert t["size"].tolist() == list(image.shape[-2:])
            if split == "val":
                assert tuple(image.shape[-2:]) == published_size(*t["orig_size"].tolist(), 256, 400)
            assert len(t["boxes"]) == len(t["labels"]) == n_orig - (ds.num_dropped_by_transforms - before)
            b = box_convert(t["boxes"], "cxcywh", "xyxy")
            assert ((b >= -1e-6) & (b <= 1 + 1e-6)).all(), (index, b)
            assert (t["boxes"][:, 2:] > 0).all()
            kept += len(b)
    assert kept > 0
    if split == "val":
        assert ds.num_dropped_by_transforms == 0  # val never drops a box


def test_only_the_boxes_the_crop_empties_are_dropped(sample, crop_calls):
    ds = build_dataset(*sample, "train", **SMALL)
    torch.manual_seed(0)
    emptied = cut = 0
    for draw in range(3):
        for index in range(len(ds)):
            before, calls_before = ds.num_dropped_by_transforms, len(crop_calls)
            ds[index]
            if len(crop_calls) == calls_before:  # the resize-only branch drops nothing
                assert ds.num_dropped_by_transforms == before
                continue
            call = crop_calls[-1]
            top, left, h, w = (call["window"][k] for k in ("top", "left", "height", "width"))
            assert call["size_out"] == (h, w)
            clipped = call["boxes_in"] - torch.tensor([left, top, left, top])
            clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
            empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
            assert torch.equal(call["boxes_out"], clipped[~empty])
            assert torch.equal(call["labels_out"], call["labels_in"][~empty])
            assert ds.num_dropped_by_transforms - before == int(empty.sum())  # nothing else dropped, all counted
            emptied += int(empty.sum())
            cut += int((~empty & (clipped != call["boxes_in"] - torch.tensor([left, top, left, top])).any(1)).sum())
    assert emptied > 0 and cut > 0  # the draws did empty some boxes and cut others


def test_a_box_cut_by_the_crop_keeps_its_clipped_part():
    class FixedCrop(RandomSizeCrop):
        def make_params(self, flat_inputs):
            return dict(top=10, left=20, height=100, width=150)  # the window x 20..170, y 10..110

    boxes = [[0, 0, 300, 200],      # the whole image: the whole window
             [50, 60, 250, 90],     # cut on the right
             [100, 5, 120, 30],     # cut at the top
             [200, 150, 250, 190],  # outside the window
             [170, 20, 200, 40],    # touches the window's right edge only: zero width
             [30, 20, 60, 50.5]]    # inside
    image, target = image_and_target(200, 300, boxes)
    image[:, 10:110, 20:170] = 7
    out_image, out = FixedCrop(1, 1)(image, target)
    assert out_image.shape == (3, 100, 150) and (out_image == 7).all()
    assert out["boxes"].canvas_size == (100, 150) and out["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor),
                       torch.tensor([[0, 0, 150, 100], [30, 50, 150, 80], [80, 0, 100, 20], [10, 10, 40, 40.5]]))
    assert out["labels"].tolist() == [1, 2, 3, 6]


def test_a_whole_image_box_survives_every_train_draw(crop_calls):
    t = make_transforms("train")  # the published sizes: scales 480-800, crop branch 400-600 then 384-600
    draws = 0
    for h, w in [(480, 640), (427, 640), (640, 427), (375, 500), (612, 612), (320, 640)]:
        torch.manual_seed(h * w)
        for _ in range(25):
            image, target = t(*image_and_target(h, w, [[0, 0, w, h]]))
            out_h, out_w = image.shape[-2:]
            assert target["labels"].tolist() == [1], (h, w, len(crop_calls))
            torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor),
                                       torch.tensor([[0.0, 0, out_w, out_h]]), atol=1e-3, rtol=0)
            draws += 1
    assert 0.3 < len(crop_calls) / draws < 0.7  # both branches drawn, the crop about half the time
    for call in crop_calls:  # the paper's crop branch: shorter side 400, 500 or 600, then a 384-600 px window
        assert min(call["size_in"]) in (400, 500, 600) and all(384 <= s <= 600 for s in call["size_out"])


def test_output_sizes_follow_the_published_rule(source, crop_calls):
    sizes = sorted({(im["height"], im["width"]) for im in source["images"]})
    assert len(sizes) > 5
    val = make_transforms("val")
    for h, w in sizes:
        assert tuple(val(*image_and_target(h, w, []))[0].shape[-2:]) == published_size(h, w, 800, 1333), (h, w)
    torch.manual_seed(0)
    cropped = 0
    for scale in PUBLISHED_SCALES:
        train = make_transforms("train", scales=(scale,))
        for h, w in sizes:
            calls_before = len(crop_calls)
            got = tuple(train(*image_and_target(h, w, []))[0].shape[-2:])
            if len(crop_calls) == calls_before:
                assert got == published_size(h, w, scale, 1333), (h, w, scale)
                continue
            call = crop_calls[-1]
            assert call["size_in"] in {published_size(h, w, s) for s in (400, 500, 600)}, (h, w, call["size_in"])
            assert got == published_size(*call["size_out"], scale, 1333), (h, w, scale, call["size_out"])
            cropped += 1
    assert 0 < cropped < len(PUBLISHED_SCALES) * len(sizes)


def test_boxes_follow_a_horizontal_flip_exactly(sample, raw):
    flipped = CocoDetection(*sample, transforms=v2.RandomHorizontalFlip(p=1.0))
    for index in (0, len(raw) // 2, len(raw) - 1):
        image, t = raw[index]
        image_f, t_f = flipped[index]
        assert torch.equal(image_f, image.flip(-1))
        w = image.shape[-1]
        x1, y1, x2, y2 = pixel_xyxy(t).unbind(-1)
        hand = torch.stack([w - x2, y1, w - x1, y2], dim=-1)
        torch.testing.assert_close(pixel_xyxy(t_f), hand, atol=1e-3, rtol=0)
        assert torch.equal(t_f["labels"], t["labels"])


def test_images_are_imagenet_normalised(sample, raw):
    image, _ = raw[3]
    short, long = sorted(image.shape[-2:])
    ds = build_dataset(*sample, "val", val_size=short, max_size=long)  # no resize: only the normalisation
    got, _ = ds[3]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(got, (image.float() / 255 - mean) / std, atol=1e-5, rtol=0)


def test_val_resize_matches_detr_at_full_size(sample):
    ds = build_dataset(*sample, "val", image_ids=[139])  # 426 x 640 -> shorter side 800, longer 1201
    image, t = ds[0]
    assert image.shape == (3, 800, 1201) and t["size"].tolist() == [800, 1201]
    assert t["orig_size"].tolist() == [426, 640]


def test_collate_pads_bottom_right_and_masks_padding(sample):
    ds = build_dataset(*sample, "train", **SMALL)
    items = [ds[i] for i in (0, 1, 2, 3)]
    images, mask, targets = collate_fn(items)
    h_max = max(im.shape[1] for im, _ in items)
    w_max = max(im.shape[2] for im, _ in items)
    assert images.shape == (4, 3, h_max, w_max) and mask.shape == (4, h_max, w_max) and mask.dtype == torch.bool
    assert len({im.shape for im, _ in items}) > 1  # the test needs mixed sizes
    for i, (image, target) in enumerate(items):
        h, w = image.shape[-2:]
        assert torch.equal(images[i, :, :h, :w], image)
        assert not mask[i, :h, :w].any() and mask[i, h:, :].all() and mask[i, :, w:].all()
        assert (images[i][:, mask[i]] == 0).all()
        assert targets[i] is target


def test_dataloader_with_collate(sample):
    ds = build_dataset(*sample, "val", max_images=4, **SMALL)
    images, mask, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_fn)))
    assert images.shape[0] == 4 and [t["image_id"].item() for t in targets] == ds.ids[:4]


def write_coco(folder: Path, images: list[dict], annotations: list[dict]) -> Path:
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}))
    return path


def test_grayscale_and_cmyk_jpegs_become_rgb(tmp_path):
    rgb = Image.new("RGB", (64, 48), (200, 30, 60))
    rgb.convert("L").save(tmp_path / "gray.jpg")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    images = [{"id": i + 1, "file_name": n, "height": 48, "width": 64} for i, n in enumerate(["gray.jpg", "cmyk.jpg"])]
    ds = CocoDetection(write_coco(tmp_path, images, []), tmp_path)
    gray, _ = ds[0]
    cmyk, _ = ds[1]
    assert gray.shape == cmyk.shape == (3, 48, 64)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert (cmyk[:, 24, 32].int() - torch.tensor([200, 30, 60])).abs().max() <= 3


def test_clamping_and_degenerate_boxes_are_counted(tmp_path):
    Image.new("RGB", (100, 80)).save(tmp_path / "a.jpg")
    boxes = [[10, 10, 20, 20], [90, 70, 30, 30], [5, 5, 0, 10], [120, 10, 5, 5], [1, 2, 3, 4]]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": int(i == 4), "area": 1.0}
            for i, b in enumerate(boxes)]
    ds = CocoDetection(write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 80, "width": 100}], anns),
                       tmp_path)
    _, t = ds[0]
    torch.testing.assert_close(pixel_xyxy(t), torch.tensor([[10.0, 10, 30, 30], [90, 70, 100, 80]]))
    assert ds.num_degenerate_dropped == 2 and ds.num_crowd_excluded == 1


def test_verify_names_missing_corrupt_and_wrong_size_files(sample, source, tmp_path):
    ann_file, img_dir = sample
    ids = [im["id"] for im in source["images"][:6]]
    for im in source["images"][:6]:
        shutil.copy(img_dir / im["file_name"], tmp_path / im["file_name"])
    names = [f"{i:012d}.jpg" for i in ids]
    (tmp_path / names[1]).unlink()
    (tmp_path / names[2]).write_bytes(b"this is not a jpeg" * 10)
    data = (tmp_path / names[3]).read_bytes()
    (tmp_path / names[3]).write_bytes(data[:200])  # truncated inside the headers
    Image.new("RGB", (32, 32)).save(tmp_path / names[4])
    ds = CocoDetection(ann_file, tmp_path, image_ids=ids)
    with pytest.raises(ValueError) as err:
        ds.verify(progress=False)
    msg = str(err.value)
    assert msg.startswith("4 of 6 images")
    assert f"{names[1]}: missing" in msg and f"{names[2]}: corrupt" in msg and f"{names[3]}: corrupt" in msg
    assert f"{names[4]}: 32x32" in msg and names[0] not in msg and names[5] not in msg
    with pytest.raises(ValueError, match="4 of 6"):
        ds.verify(decode=False, progress=False)
    with pytest.raises(ImageReadError, match=f"{names[1]}: no such file"):
        ds[1]
    with pytest.raises(ImageReadError, match=f"{names[2]}: not an image file"):
        ds[2]
    with pytest.raises(ValueError, match=f"{names[4]} is 32x32"):
        ds[4]
    assert CocoDetection(ann_file, tmp_path, image_ids=[ids[0], ids[5]]).verify(progress=False) == 2


def test_subset_arguments_and_bad_options(sample):
    ds = CocoDetection(*sample, image_ids=[802, 139], max_images=1)
    assert ds.ids == [139] and len(CocoDetection(*sample, image_ids=[802, 139])) == 2
    with pytest.raises(ValueError, match=r"image_ids not in .*\[1\]"):
        CocoDetection(*sample, image_ids=[1, 139])
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\), got 'test'"):
        make_transforms("test")
    with pytest.raises(ValueError, match="scales must hold positive integers"):
        make_transforms("train", scales=())
    with pytest.raises(FileNotFoundError, match="image folder"):
        CocoDetection(sample[0], sample[1] / "nope")


def test_training_without_the_crop_branch_keeps_every_box(crop_calls):
    """``random_crop=False`` (the demo world's fine-tuning): flips and the resize only, never a crop."""
    t = make_transforms("train", scales=(96,), max_size=160, val_size=96, random_crop=False)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(40):
        image, target = t(*image_and_target(160, 224, [[10, 20, 60, 80]]))
        assert tuple(image.shape[-2:]) == (96, 134) and target["labels"].tolist() == [1]
        x1 = float(target["boxes"].as_subclass(torch.Tensor)[0, 0])
        flipped += x1 > 67  # mirrored: the box moved to the right half
    assert not crop_calls and 8 < flipped < 32


def test_resolve_coco_layout_finds_each_layout_and_lists_what_it_tried(tmp_path):
    for images, ann in (("val2017", "instances_val2017.json"), ("images", "instances_val2017_sample.json"),
                        ("images", "instances.json")):
        root = tmp_path / ann
        (root / images).mkdir(parents=True)
        (root / "annotations").mkdir()
        (root / "annotations" / ann).write_text("{}")
        assert resolve_coco_layout(root) == (root / images, root / "annotations" / ann)
    with pytest.raises(FileNotFoundError, match=r"val2017/ \+ .*instances_val2017_sample\.json.*instances\.json"):
        resolve_coco_layout(tmp_path / "nothing")
