"""Detect objects in your images with a trained DETR: boxes drawn on each image, and one COCO results file.

Usage::

    python -m detr_nb_utils.predict --run runs/demo/dec6_q100_seed42 photo.jpg more_photos/ --out predictions/
    python -m detr_nb_utils.predict --checkpoint data/checkpoints/detr-r50-e632da11.pth street.jpg --threshold 0.9
    python -m detr_nb_utils.predict --checkpoint data/pretrained/tiny_detr.pth data/synthetic/coco/images

``--run`` takes a run folder (its configuration, class names and best weights; the last ones when no epoch was
evaluated yet), ``--checkpoint`` a DETR checkpoint file with COCO's 91 classes (the official
``detr-r50-e632da11.pth``, the demo's tiny DETR); either is read by the package's one checkpoint reader, so damaged
weights are named, never used. IMAGES are files or folders (their image files, :data:`~detr_nb_utils.data.images.
IMAGE_SUFFIXES`, sorted). Into ``--out`` (default ``predictions/``) go ``<stem>.jpg`` per image with its detections
at score >= ``--threshold`` (default 0.7) drawn, ``results.json`` (COCO's results format, in the dataset's category
ids) and ``images.json`` (the images and categories as a COCO file: ``COCO("images.json").loadRes("results.json")``),
for exactly the images of this call: an earlier call's files in ``--out`` are removed first, and a file there that
no earlier call wrote is never overwritten (the command stops before writing anything).

Every image goes through the one image reader (:func:`~detr_nb_utils.data.images.read_image`); one it refuses
(truncated, too many pixels, not an image, ...) is named with the reason and skipped, and the others are predicted.
Exit status: 0 when every image was predicted, 1 when some failed, 2 when none could be read or an argument (folder,
checkpoint, threshold, output folder) is bad; expected errors print ``error: ...`` naming the file.
The Python API behind it is :mod:`detr_nb_utils.training.inference` and :mod:`detr_nb_utils.training.prediction_files`.
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .data.images import IMAGE_SUFFIXES, shown
from .data.label_map import LabelMap
from .models.checkpoint import CheckpointError
from .training.inference import model_from_checkpoint, model_from_run, predict_images
from .training.prediction_files import write_outputs


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a score in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detr_nb_utils.predict",
        description="Detect objects in images with a trained DETR; write each image with its boxes drawn and one "
                    "COCO results file.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="RUN_DIR",
                        help="a run folder (config.json, categories.json, checkpoint_best.pth)")
    source.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="a DETR checkpoint file with COCO's 91 classes (official layout or the demo's tiny one)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGES",
                        help="image files, or folders of image files (" + "/".join(IMAGE_SUFFIXES) + ")")
    parser.add_argument("--threshold", type=_threshold, default=0.7,
                        help="keep detections with score >= this (default 0.7)")
    parser.add_argument("--out", type=Path, default=Path("predictions"),
                        help="output folder (default predictions/); an earlier prediction's files there are replaced")
    parser.add_argument("--batch-size", type=_positive, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto (CUDA when there is one; default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """The image files named by ``inputs``: a folder stands for its files with an image suffix
    (:data:`~detr_nb_utils.data.images.IMAGE_SUFFIXES`; sorted, not recursive), anything else for itself (a missing
    file is kept, to be reported as failed). Repeats dropped."""
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                _say(f"warning: folder {p} holds no {'/'.join(IMAGE_SUFFIXES)} files", sys.stderr)
            found += files
        else:
            found.append(p)
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 all predicted, 1 some failed, 2 none or a bad argument)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the problem (or the help)
        return int(e.code or 0)
    paths = collect_images(args.images)
    if not paths:
        _say("error: no images to predict", sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if args.run is not None:
                model, labels, cfg = model_from_run(args.run)
                sizes = {"min_size": cfg.min_size, "max_size": cfg.max_size}
                source = f"run {args.run}"
            else:
                model, labels, sizes = model_from_checkpoint(args.checkpoint)
                source = f"checkpoint {args.checkpoint}"
        for w in caught:  # the loaders' own warnings (no best weights) as one plain line each
            if issubclass(w.category, UserWarning):
                _say(f"warning: {w.message}", sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        result = predict_images(model, labels, paths, threshold=args.threshold, batch_size=args.batch_size,
                                device=args.device, progress=not args.no_progress, **sizes)
        if result.images:
            write_outputs(result, args.out, progress=not args.no_progress)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        _say(f"error: {e}", sys.stderr)
        return 2
    except OSError as e:
        _say(f"error: cannot write the predictions to {args.out}: {e}", sys.stderr)
        return 2
    _say(f"{_describe(labels)} from {source}, shorter side {sizes['min_size']} px")
    _say(result.summary())
    for path, reason in result.failed:
        _say(f"  {path}: {reason}")
    if not result.images:
        _say("no image could be read; nothing written")
        return 2
    _say(f"wrote {len(result.images)} drawn images, results.json and images.json to {args.out}/")
    return 1 if result.failed else 0


def _say(text: str, file=None) -> None:
    """Print ``text`` with non-UTF-8 file names escaped (``\\xNN``), so naming such a file cannot fail."""
    print(shown(text), file=file or sys.stdout)


def _describe(labels: LabelMap) -> str:
    return "COCO's 80 categories" if labels.label_space == "coco" else f"{labels.num_classes} classes"


if __name__ == "__main__":
    sys.exit(main())
