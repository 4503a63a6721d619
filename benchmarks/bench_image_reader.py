"""The one image reader (PIL, ``detr_nb_utils.data.images.read_image``) against torchvision's ``decode_image``, the
decoder training and predict used before it: do the pixels change, and what does a decode cost?

On every JPEG the demo reads (its 500-image synthetic pool exactly as ``make demo`` makes it, 07's own dataset, and
500 images of the pre-training stream, encoded in memory as :class:`~detr_nb_utils.data.synthetic.ShapeStream`
does), on the committed COCO sample ``tests/data/coco_sample`` and, when present, on the 206 real val2017 images of
``../shared/coco_val2017_sample``: the number of images whose uint8 RGB pixels differ at all, and the seconds per
decode of each reader (best of ``--repeat`` passes over the files, one thread; the machine may be shared, so the
load average is printed too). Prints a Markdown table for ``benchmarks/RESULTS.md`` ("Image reader")::

    .venv/bin/python benchmarks/bench_image_reader.py
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import PIL
import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image

from detr_nb_utils.data.images import read_image
from detr_nb_utils.data.synthetic import make_synthetic_coco, world_sample
from detr_nb_utils.data.synthetic_own import make_own_dataset
from detr_nb_utils.training.config import PROFILES

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO / "../shared/coco_val2017_sample/images").resolve()


def _torchvision(source) -> torch.Tensor:
    data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, not a dependency here
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _pil(source) -> torch.Tensor:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return read_image(source)


def stream_jpegs(n: int) -> list[io.BytesIO]:
    """The pre-training stream's first ``n`` images, JPEG-encoded in memory as ShapeStream encodes them."""
    out = []
    for i in range(n):
        img = world_sample("pretrain", i, 0, (160, 224))[0]
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
        out.append(buffer)
    return out


def best_seconds(read, sources, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for s in sources:
            read(s)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        demo = PROFILES["demo"]
        pool = make_synthetic_coco(Path(tmp) / "pool", n_images=demo["n_train"] + demo["n_val"],
                                   seed=demo.get("split_seed", 42))
        own = make_own_dataset(Path(tmp) / "own")
        sets = {"demo pool (make demo's 500 synthetic JPEGs)": sorted(pool.images.glob("*.jpg")),
                "07's own dataset": sorted(Path(own.root).rglob("*.jpg")),
                "pre-training stream (500, in memory)": stream_jpegs(500),
                "tests/data/coco_sample (24 real)": sorted((REPO / "tests/data/coco_sample/images").glob("*.jpg"))}
        if SHARED.is_dir():
            sets["../shared/coco_val2017_sample (206 real)"] = sorted(SHARED.glob("*.jpg"))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"torchvision {torchvision.__version__}, Pillow {PIL.__version__}, 1 thread, load {load:.1f}")
        print("| images | n | pixels differ | torchvision ms/image | read_image ms/image |\n|---|---|---|---|---|")
        for name, sources in sets.items():
            differ = sum(not torch.equal(_pil(s), _torchvision(s)) for s in sources)
            tv = best_seconds(_torchvision, sources, args.repeat) / len(sources) * 1e3
            pil = best_seconds(_pil, sources, args.repeat) / len(sources) * 1e3
            print(f"| {name} | {len(sources)} | {differ} | {tv:.2f} | {pil:.2f} |")


if __name__ == "__main__":
    main()
