"""How long scoring one evaluation takes: COCOeval of the final layer (every statistic) and AP/AP50 of each
auxiliary decoder layer, all in this process against auxiliary layers in worker processes
(:func:`detr_nb_utils.training.coco_eval.start_layer_aps`), as :func:`detr_nb_utils.training.evaluation.evaluate` does.

The validation set is the COCO val2017 sample (206 real images with their annotations) repeated under new image
ids to ``--images`` images (the study scores 1,000). Each image gets 100 detections like DETR's: its ground-truth
boxes jittered, with their category or a wrong one, and random boxes for the remaining queries, with random
scores. Prints the seconds and appends a row to ``benchmarks/RESULTS.md``::

    python benchmarks/bench_cocoeval.py --images 1030 --layers 6
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from detr_nb_utils.training.coco_eval import pool_workers, run_cocoeval, start_layer_aps  # noqa: E402

SAMPLE = HERE.parent.parent / "shared" / "coco_val2017_sample" / "annotations" / "instances_val2017_sample.json"
RESULTS = HERE / "RESULTS.md"
SECTION = "## COCOeval per evaluation"


def repeated_gt(path: Path, n_images: int) -> COCO:
    """The sample's ground truth repeated under new image and annotation ids up to ``n_images`` images."""
    src = json.loads(path.read_text())
    images, anns = [], []
    for k in range(-(-n_images // len(src["images"]))):
        for im in src["images"]:
            images.append({**im, "id": im["id"] + k * 10**7})
        for a in src["annotations"]:
            anns.append({**a, "id": a["id"] + k * 10**8, "image_id": a["image_id"] + k * 10**7})
    keep = {im["id"] for im in images[:n_images]}
    coco = COCO()
    coco.dataset = {"images": images[:n_images], "categories": src["categories"],
                    "annotations": [a for a in anns if a["image_id"] in keep]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def fake_detections(coco: COCO, seed: int, per_image: int = 100) -> np.ndarray:
    """``[N,7]`` results: jittered ground truth (a third with a wrong category) and random boxes, random scores."""
    rng = np.random.default_rng(seed)
    cats = np.array(sorted(coco.cats))
    rows = []
    for image_id, im in coco.imgs.items():
        gt = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]][:per_image]
        boxes = np.array([a["bbox"] for a in gt]).reshape(-1, 4)
        boxes = boxes + rng.normal(0, 0.05, boxes.shape) * boxes[:, [2, 3, 2, 3]]
        labels = np.array([a["category_id"] for a in gt])
        wrong = rng.random(len(labels)) < 1 / 3
        labels[wrong] = rng.choice(cats, wrong.sum())
        n = per_image - len(gt)
        wh = rng.uniform(0.05, 0.5, (n, 2)) * [im["width"], im["height"]]
        xy = rng.uniform(0, 1, (n, 2)) * ([im["width"], im["height"]] - wh)
        boxes = np.concatenate([boxes, np.concatenate([xy, wh], 1)])
        labels = np.concatenate([labels, rng.choice(cats, n)])
        scores = rng.uniform(0, 1, per_image)
        rows.append(np.column_stack([np.full(per_image, image_id), boxes, scores, labels]))
    return np.concatenate(rows)


def time_evaluation(coco: COCO, results: list[np.ndarray], workers: int) -> float:
    """Seconds to score the final layer (every statistic) and the auxiliary ones (AP, AP50), as evaluate does."""
    img_ids = sorted(coco.getImgIds())
    t = time.perf_counter()
    wait = start_layer_aps(coco, results[:-1], img_ids, workers)
    run_cocoeval(coco, results[-1], img_ids)
    wait()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1030)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--no-results", action="store_true")
    a = p.parse_args()
    if not SAMPLE.is_file():
        raise SystemExit(f"{SAMPLE} is missing: this benchmark needs the shared COCO val2017 sample")
    coco = repeated_gt(SAMPLE, a.images)
    results = [fake_detections(coco, seed) for seed in range(a.layers)]
    auto = pool_workers(a.layers - 1, a.images)
    one = time_evaluation(coco, results, 0)
    pooled = time_evaluation(coco, results, auto) if auto else one
    line = (f"| {dt.datetime.now():%Y-%m-%d %H:%M} | {os.cpu_count()} | {a.images} | {a.layers} | {one:.1f} | "
            f"{auto} | {pooled:.1f} | {os.getloadavg()[0]:.1f} |")
    print(f"{a.images} images, {a.layers} layers: {one:.1f} s in this process, {pooled:.1f} s with {auto} worker(s)")
    if not a.no_results:
        text = RESULTS.read_text()
        if SECTION not in text:
            text = text.rstrip("\n") + (
                f"\n\n{SECTION}\n\n`benchmarks/bench_cocoeval.py`: scoring one evaluation, the final layer with every "
                "COCO statistic and each auxiliary layer with AP and AP50, on the COCO sample repeated to the study's "
                "size, 100 detections per image. \"in this process\": one after the other; \"pooled\": the auxiliary "
                "layers in worker processes while this one scores the final layer (what `evaluate` does from 500 "
                "images).\n\n| date | cores | images | layers | in this process s | workers | pooled s | load (1 min) |"
                "\n|---|---|---|---|---|---|---|---|\n")
        RESULTS.write_text(text.rstrip("\n") + "\n" + line + "\n")


if __name__ == "__main__":
    main()
