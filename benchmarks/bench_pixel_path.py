"""How far the project's image pixels are from the published DETR's, on the real sample ``tests/data/coco_sample``.

Same geometry, two pixel paths (the module docstring of ``detr_nb_utils/data/transforms.py`` says where they part):
the published val transform (``datasets/coco.py``'s ``make_coco_transforms("val")``: PIL decode, PIL bilinear
resize, ``ToTensor``, ``Normalize``) and the project's (``CocoDetection`` with ``make_transforms("val")``: the one
image reader ``read_image``, PIL too, tensor bilinear resize with antialias, the same normalisation), at the same
output size. The
difference is split into its two causes:

- decoder: the two decoders' uint8 pixels at the stored size, in normalised units (levels / 255 / std);
- resampling: the same PIL-decoded pixels through both resizes and the normalisation;
- total: each pipeline end to end, what the model sees.

Absolute differences after normalisation (ImageNet std, so one uint8 level is about 0.017-0.018), the mean over
every value of every image and the maximum. The published source is not part of this repository: pass a checkout
(its ``datasets/`` and ``util/``). Never run in CI; the figures are in ``benchmarks/RESULTS.md``
("Pixel path against the published DETR")::

    .venv/bin/python benchmarks/bench_pixel_path.py --published /tmp/detr_published
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
from pathlib import Path

import PIL
import torch
import torchvision
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from detr_nb_utils.data.coco import CocoDetection
from detr_nb_utils.data.transforms import IMAGENET_STD, MAX_SIZE, VAL_SIZE, make_transforms

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "coco_sample"
ANNOTATIONS = Path("annotations") / "instances_val2017_sample.json"


def published_val_transform(root: Path):
    """The published ``make_coco_transforms("val")``, imported from the checkout ``root``."""
    if not (root / "datasets" / "coco.py").is_file():
        raise SystemExit(f"--published {root}: no datasets/coco.py there (a facebookresearch/detr checkout)")
    sys.path.insert(0, str(root))
    coco = importlib.import_module("datasets.coco")
    if not Path(coco.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"datasets.coco was imported from {coco.__file__}, not from {root}")
    return coco.make_coco_transforms("val")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class Diff:
    """Running mean and max of |a - b| over every value seen, and the share off by a uint8 level or more (a level
    is 1/255/std >= 0.017 after normalisation; float rounding of the normalisation alone stays under 1e-6)."""

    def __init__(self) -> None:
        self.total, self.count, self.max, self.differ = 0.0, 0, 0.0, 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        d = (a.double() - b.double()).abs()
        self.total += d.sum().item()
        self.count += d.numel()
        self.max = max(self.max, d.max().item())
        self.differ += int((d > 1e-3).sum())

    def row(self, name: str) -> str:
        return f"| {name} | {self.total / self.count:.2e} | {self.max:.4f} | {100 * self.differ / self.count:.3f}% |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", type=Path, required=True, help="a facebookresearch/detr checkout")
    ap.add_argument("--coco-sample", type=Path, default=SAMPLE, help="COCO-layout folder (images/, annotations/)")
    args = ap.parse_args()
    published = published_val_transform(args.published)
    ours = make_transforms("val")
    dataset = CocoDetection(args.coco_sample / ANNOTATIONS, args.coco_sample / "images", ours)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    decoder, resampling, total = Diff(), Diff(), Diff()
    for index in range(len(dataset)):
        with Image.open(dataset.image_path(index)) as im:
            pil = im.convert("RGB")  # what the published CocoDetection loads
        pil_pixels = F.pil_to_tensor(pil)
        decoder.add(pil_pixels / 255 / std, dataset.read_image(index) / 255 / std)
        reference, _ = published(pil, None)
        same_pixels, _ = ours(tv_tensors.Image(pil_pixels), None)
        project, _ = dataset[index]
        if not reference.shape == same_pixels.shape == project.shape:
            raise SystemExit(f"image {dataset.ids[index]}: sizes differ, published {tuple(reference.shape)}, "
                             f"project {tuple(project.shape)}")
        resampling.add(reference, same_pixels)
        total.add(reference, project)
    print(json.dumps({"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "torch": torch.__version__,
                      "torchvision": torchvision.__version__, "pillow": PIL.__version__,
                      "images": len(dataset), "size": f"shorter side {VAL_SIZE}, longer at most {MAX_SIZE}"}))
    print("| difference | mean abs | max abs | values off by >= 1 level |\n|---|---|---|---|")
    print("\n".join([decoder.row("decoder"), resampling.row("resampling"), total.row("total")]))


if __name__ == "__main__":
    main()
