"""Make the small real COCO sample committed under ``tests/data/coco_sample`` from the shared 206-image sample.

    python tools/make_coco_sample.py --source ../shared/coco_val2017_sample --out tests/data/coco_sample

Picks about 24 of the shared sample's images, deterministically, by the rules in :func:`choose` (the ids the
tests name, the most crowded image, an image without annotations, a grayscale photo, crowd regions, boxes
touching every image edge, a spread of shapes, then the smallest files that add categories), with the whole
output folder at most ``--budget`` bytes as ``du -sb`` counts them. The JPEGs are copied byte for byte (md5
checked against the source's ``provenance.tsv``), never re-encoded: they stay the real val2017 files. Writes the
shared sample's layout, which ``resolve_coco_layout`` finds: ``images/*.jpg``,
``annotations/instances_val2017_sample.json`` (the original records of exactly these images: ``info``, the
``licenses`` they use, ``images``, all their ``annotations`` with original ids, all 80 ``categories``; key order
and JSON formatting as in the source) and ``SOURCES.md``.
Rerunning it rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ANN_NAME = "annotations/instances_val2017_sample.json"
EDGE_TOLERANCE = 1.0  # pixels: a box "touches" an edge when it ends within this of it
SIDES = ("left", "top", "right", "bottom")
#: shape buckets by aspect ratio width / height: [low, high)
SHAPES = {"tall portrait": (0.0, 0.67), "portrait": (0.67, 0.95), "square": (0.95, 1.06),
          "landscape": (1.06, 1.6), "wide landscape": (1.6, 99.0)}
TEST_IDS = (139, 802)  # tests/test_data.py names these images
SMALL_SIDE = 400  # a longer side at most this many pixels is a "small image"
N_CROWD_IMAGES = 3  # chosen images with a crowd region
N_EDGE_IMAGES = 2  # chosen images with a box on each edge
DIR_RESERVE = 3 * 4096 + 16384  # du -sb counts the three folders too; slack for the folder sizes of other filesystems


@dataclass(frozen=True)
class Candidate:
    """One source image and the facts the rules choose by."""
    id: int
    file_name: str
    bytes: int
    width: int
    height: int
    n_boxes: int  # non-crowd annotations
    n_crowd: int
    sides: frozenset[str]  # image edges touched by a non-crowd box
    categories: frozenset[int]  # of its non-crowd boxes
    grayscale: bool

    @property
    def shape(self) -> str:
        ratio = self.width / self.height
        return next(name for name, (low, high) in SHAPES.items() if low <= ratio < high)


def touched_sides(bbox: list[float], width: int, height: int) -> set[str]:
    x, y, w, h = bbox
    hits = (x <= EDGE_TOLERANCE, y <= EDGE_TOLERANCE, x + w >= width - EDGE_TOLERANCE,
            y + h >= height - EDGE_TOLERANCE)
    return {side for side, hit in zip(SIDES, hits) if hit}


def is_grayscale(path: Path) -> bool:
    """True for a one-channel JPEG and for a three-channel one whose channels are equal everywhere."""
    with Image.open(path) as im:
        if im.mode in ("L", "LA", "I", "I;16"):
            return True
        pixels = np.asarray(im.convert("RGB"))
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def load_candidates(source: Path, coco: dict) -> list[Candidate]:
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for im in coco["images"]:
        path = source / "images" / im["file_name"]
        boxes = [a for a in anns.get(im["id"], []) if not a["iscrowd"]]
        sides = set().union(*(touched_sides(a["bbox"], im["width"], im["height"]) for a in boxes))
        out.append(Candidate(im["id"], im["file_name"], path.stat().st_size, im["width"], im["height"], len(boxes),
                             len(anns.get(im["id"], [])) - len(boxes), frozenset(sides),
                             frozenset(a["category_id"] for a in boxes), is_grayscale(path)))
    return out


class Selection:
    """Images chosen so far, in order, with the reason for each; refuses an image past the byte budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.chosen: dict[int, tuple[Candidate, str]] = {}

    @property
    def images(self) -> list[Candidate]:
        return [c for c, _ in self.chosen.values()]

    def fits(self, c: Candidate) -> bool:
        return c.id not in self.chosen and sum(x.bytes for x in self.images) + c.bytes <= self.budget

    def take_first(self, ranked: list[Candidate], reason: Callable[[Candidate], str]) -> Candidate | None:
        """The first of ``ranked`` that fits, taken with ``reason(c)``; None when none fits."""
        for c in ranked:
            if self.fits(c):
                self.chosen[c.id] = (c, reason(c))
                return c
        return None


def choose(candidates: list[Candidate], n_images: int, image_budget: int, keep: list[int]) -> Selection:
    """The rules, in order; each takes the smallest file (then the lowest id) that qualifies and still fits."""
    by_size = sorted(candidates, key=lambda c: (c.bytes, c.id))
    sel = Selection(image_budget)
    by_id = {c.id: c for c in candidates}
    for image_id in keep:
        if image_id not in by_id:
            raise ValueError(f"--keep {image_id}: no such image in the source sample")
        if not sel.take_first([by_id[image_id]],
                              lambda c: "--keep: named in tests/test_data.py" if c.id in TEST_IDS else "--keep"):
            raise ValueError(f"--keep {image_id} does not fit the budget")
    crowded = sorted(candidates, key=lambda c: (-c.n_boxes, c.bytes, c.id))
    sel.take_first(crowded, lambda c: f"most crowded image that fits: {c.n_boxes} boxes")
    sel.take_first([c for c in by_size if not c.n_boxes + c.n_crowd], lambda c: "no annotation at all")
    sel.take_first([c for c in by_size if c.grayscale], lambda c: "grayscale photo (a 3-channel JPEG with R = G = B)")
    while sum(c.n_crowd > 0 for c in sel.images) < N_CROWD_IMAGES:
        if not sel.take_first([c for c in by_size if c.n_crowd], lambda c: f"crowd regions (iscrowd=1): {c.n_crowd}"):
            break
    for side in SIDES:
        while sum(side in c.sides for c in sel.images) < N_EDGE_IMAGES:
            reason = f"box touching the {side} edge"
            if not sel.take_first([c for c in by_size if side in c.sides], lambda c, reason=reason: reason):
                break
    for shape in SHAPES:
        if not any(c.shape == shape for c in sel.images):
            sel.take_first([c for c in by_size if c.shape == shape], lambda c: f"shape: {c.shape}")
    if not any(max(c.width, c.height) <= SMALL_SIDE for c in sel.images):
        sel.take_first([c for c in by_size if max(c.width, c.height) <= SMALL_SIDE], lambda c: "small image")
    while len(sel.chosen) < n_images:
        seen = set().union(*(c.categories for c in sel.images))
        new = [c for c in by_size if c.categories - seen]
        if not (sel.take_first(new, lambda c, seen=seen: f"smallest file adding categories: {len(c.categories - seen)}")
                or sel.take_first(by_size, lambda c: "smallest remaining file")):
            break
    return sel


def subset_coco(coco: dict, image_ids: set[int]) -> dict:
    """The source's records for ``image_ids``, in the source's order and key order; licenses: those used."""
    images = [im for im in coco["images"] if im["id"] in image_ids]
    used = {im["license"] for im in images}
    parts = {"info": coco["info"], "licenses": [lic for lic in coco["licenses"] if lic["id"] in used],
             "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in image_ids],
             "categories": coco["categories"]}
    return {key: parts[key] for key in coco}  # source key order; a key the source lacks fails here


def read_provenance(source: Path) -> dict[int, dict]:
    with open(source / "provenance.tsv", newline="") as f:
        return {int(row["image_id"]): row for row in csv.DictReader(f, delimiter="\t")}


def repository_rows(source: Path, repos: set[str]) -> list[str]:
    """The header and the rows of the shared SOURCES.md's repository table that name ``repos``."""
    lines = (source / "SOURCES.md").read_text().splitlines()
    start = lines.index("## Source repositories") + 1
    table = [line for line in lines[start:start + 10] if line.startswith("|")]
    rows = [line for line in table[2:] if any(f"[{repo}]" in line for repo in repos)]
    missing = [r for r in repos if not any(f"[{r}]" in line for line in rows)]
    if missing:
        raise ValueError(f"{source / 'SOURCES.md'} has no repository row for {missing}")
    return table[:2] + rows


def _header(sel: Selection, sub: dict) -> list[str]:
    n_crowd = sum(a["iscrowd"] for a in sub["annotations"])
    return [
        f"# coco_sample: {len(sub['images'])} real COCO val2017 images with their original annotations",
        "",
        "A small, real slice of COCO val2017 committed with the tests, so that the real-data tests run in every",
        "clone. Nothing here is synthesized or edited. Made by `tools/make_coco_sample.py` from",
        "`../shared/coco_val2017_sample` (206 val2017 images and their original `instances_val2017` records, on CI",
        "and dev machines). Do not edit it by hand: change the tool and rerun it; it rewrites the same bytes.",
        "",
        "    python tools/make_coco_sample.py --source ../shared/coco_val2017_sample --out tests/data/coco_sample",
        "",
        (f"- `images/`: {len(sub['images'])} val2017 JPEGs named as in COCO, {sum(c.bytes for c in sel.images):,} "
         "bytes, byte-for-byte copies (never re-encoded; md5 checked against the shared sample's `provenance.tsv`)."),
        (f"- `{ANN_NAME}`: the original records of exactly these images: `info`, the {len(sub['licenses'])} "
         f"`licenses` they use, `images`, all {len(sub['annotations'])} of their `annotations` with original ids "
         f"({n_crowd} `iscrowd=1`, RLE), all 80 `categories`; key order and formatting as in the source. The shared "
         "sample's layout, which `resolve_coco_layout` finds."),
        "",
        "## How the images were chosen",
        "Rules in order; each takes the smallest file (then the lowest id) that qualifies and still fits the budget:",
        "- the ids given with `--keep` (by default those tests/test_data.py names);",
        "- the most crowded image (most non-crowd boxes);",
        "- an image without annotations;",
        "- a grayscale photo (the shared sample holds no one-channel JPEG);",
        f"- images with crowd regions, until {N_CROWD_IMAGES} chosen images have one;",
        (f"- images with a box touching an image edge (within {EDGE_TOLERANCE:g} px), until each edge is touched "
         f"in {N_EDGE_IMAGES} chosen images;"),
        (f"- one image of each shape by width / height ({', '.join(SHAPES)}) and a small one (longer side <= "
         f"{SMALL_SIDE} px);"),
        "- then the smallest files that add a category not yet present, up to the image count.",
        "",
    ]


def _image_table(sel: Selection, sub: dict) -> list[str]:
    images = {im["id"]: im for im in sub["images"]}
    names = {lic["id"]: lic["name"] for lic in sub["licenses"]}
    lines = ["`edges`: the image edges that a non-crowd box touches (Left, Top, Right, Bottom).", "",
             "| id | w x h | bytes | boxes | crowd | edges | why | license | flickr_url | coco_url |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c, why in sel.chosen.values():
        im = images[c.id]
        edges = " ".join(side[0].upper() for side in SIDES if side in c.sides) or "-"
        lines.append(f"| {c.id} | {c.width} x {c.height} | {c.bytes:,} | {c.n_boxes} | {c.n_crowd} | {edges} | "
                     f"{why} | {im['license']}: {names[im['license']]} | {im['flickr_url']} | {im['coco_url']} |")
    return lines + [""]


def _origin_and_licenses(sel: Selection, sub: dict, source: Path, provenance: dict[int, dict]) -> list[str]:
    repos = {repo for c in sel.images for key in ("jpeg_from", "json_record_in")
             for repo in provenance[c.id][key].split(",")}
    jpeg_from = Counter(provenance[c.id]["jpeg_from"] for c in sel.images)
    per_license = Counter(im["license"] for im in sub["images"])
    lines = ["## Where the files came from",
             "The shared sample took them from these public repositories (its SOURCES.md lists the checks made; its",
             "`provenance.tsv` gives each image's `jpeg_from` and md5). The table's counts are the shared sample's.",
             "",
             *repository_rows(source, repos), "",
             "JPEGs here, by repository: " + ", ".join(f"{r} {n}" for r, n in sorted(jpeg_from.items())) + ".", "",
             "## Licenses",
             ("- **Annotations**: COCO Consortium, Creative Commons Attribution 4.0 (CC BY 4.0). See "
              "https://cocodataset.org/#termsofuse"),
             "- **Images**: Flickr images. COCO does not own them, and their use must follow the Flickr terms of use.",
             "  Each image's `license` field refers to the `licenses` list; its `flickr_url` and `coco_url` (above)",
             "  identify the original. The image files are unmodified.", "",
             "| id | license | url | images |", "|---|---|---|---|"]
    lines += [f"| {lic['id']} | {lic['name']} | {lic['url']} | {per_license[lic['id']]} |" for lic in sub["licenses"]]
    nc, nd = (sum(per_license[lic["id"]] for lic in sub["licenses"] if term in lic["name"])
              for term in ("NonCommercial", "NoDerivs"))
    return lines + ["", (f"{nc} of the {len(sub['images'])} images carry NonCommercial terms and {nd} NoDerivs "
                         "terms. Check this before redistributing the repository commercially."), ""]


def sources_md(sel: Selection, sub: dict, source: Path, provenance: dict[int, dict]) -> str:
    """SOURCES.md: what the sample is, how it was made, and each image's licence and original."""
    return "\n".join(_header(sel, sub) + _image_table(sel, sub) + _origin_and_licenses(sel, sub, source, provenance))


def folder_bytes(root: Path) -> int:
    """What ``du -sb`` reports: the apparent sizes of every file and folder under ``root``, ``root`` included."""
    return sum(p.lstat().st_size for p in [root, *root.rglob("*")])


def write_sample(sel: Selection, coco: dict, source: Path, out: Path, budget: int) -> int:
    """Writes the sample into ``out``, replacing the JPEGs a previous run left; returns its size in bytes."""
    provenance = read_provenance(source)
    sub = subset_coco(coco, set(sel.chosen))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    for old in (out / "images").glob("*.jpg"):
        old.unlink()
    for c in sel.images:
        dest = out / "images" / c.file_name
        shutil.copyfile(source / "images" / c.file_name, dest)
        if hashlib.md5(dest.read_bytes()).hexdigest() != provenance[c.id]["jpeg_md5"]:
            raise ValueError(f"{dest}: md5 differs from {source / 'provenance.tsv'}")
    (out / ANN_NAME).write_text(json.dumps(sub))  # the source's formatting: json.dumps defaults, no newline
    (out / "SOURCES.md").write_text(sources_md(sel, sub, source, provenance))
    total = folder_bytes(out)
    if total > budget:
        raise ValueError(f"{out} holds {total:,} bytes, over the budget of {budget:,}: lower --n-images")
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the shared sample: images/, annotations/, "
                        "provenance.tsv, SOURCES.md")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--budget", type=int, default=4_000_000, help="bytes for the whole output folder (du -sb)")
    parser.add_argument("--metadata-reserve", type=int, default=400_000,
                        help="bytes of the budget kept for the JSON and SOURCES.md when choosing images")
    parser.add_argument("--keep", type=int, nargs="*", default=list(TEST_IDS),
                        help="image ids taken first (default: the ids tests/test_data.py names)")
    args = parser.parse_args(argv)
    coco = json.loads((args.source / ANN_NAME).read_text())
    candidates = load_candidates(args.source, coco)
    sel = choose(candidates, args.n_images, args.budget - args.metadata_reserve - DIR_RESERVE, args.keep)
    total = write_sample(sel, coco, args.source, args.out, args.budget)
    for c, why in sel.chosen.values():
        print(f"{c.id:>7} {c.width}x{c.height} {c.bytes:>8,} B  boxes {c.n_boxes:>2} crowd {c.n_crowd}  {why}")
    print(f"{len(sel.chosen)} images, {total:,} bytes in {args.out}")


if __name__ == "__main__":
    main()
