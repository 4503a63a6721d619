"""``python -m detr_nb_utils.export``: a run folder or a checkpoint file as a Hugging Face model folder or an ONNX
file.

Usage::

    python -m detr_nb_utils.export --run runs/study/dec6_q100_seed42 --to hf --out exported/dec6_q100
    python -m detr_nb_utils.export --checkpoint data/checkpoints/detr-r50-e632da11.pth --to hf --out detr-r50-hf
    python -m detr_nb_utils.export --run runs/demo/dec6_q100_seed42 --to onnx --out dec6_q100.onnx

``--run`` exports a run folder's best weights with its label map, image sizes and dropout, and writes a model card
from the folder (AP with its interval, recipe, seeds, AP per class); ``--checkpoint`` a DETR checkpoint file with
COCO's 91 classes at the published sizes (the official file, the demo's tiny DETR, a Hugging Face folder). ``--to
hf`` takes the DETR-R50 family only; ``--to onnx`` every backbone. Each export is checked (transformers or ONNX
Runtime against PyTorch) before it is renamed into place. Exit status 0 on success, 2 on a bad argument, an input
that cannot be read, a missing package or an export that did not check out (the error says which).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..models.checkpoint import CheckpointError
from ..training.inference import model_from_checkpoint, model_from_run
from .hugging_face import export_hf, hf_config
from .model_card import checkpoint_card, run_card
from .onnx_export import export_onnx
from .output import ExportError

TARGETS = ("hf", "onnx")
PUBLISHED_DROPOUT = 0.1


def _dropout(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detr_nb_utils.export",
        description="Export a trained DETR as a Hugging Face model folder (transformers, pipeline) or an ONNX file.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="a run folder (its best weights and label map)")
    source.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="a DETR checkpoint with COCO's 91 classes (official layout, the demo's tiny DETR, or a "
                             "Hugging Face folder)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="hf: a Hugging Face folder; onnx: one .onnx file")
    parser.add_argument("--out", required=True, type=Path, help="the folder (hf) or file (onnx) to write")
    parser.add_argument("--dropout", type=_dropout, default=None,
                        help=f"hf: dropout for further fine-tuning in transformers (default: the run's; "
                             f"{PUBLISHED_DROPOUT} for a checkpoint, the published value)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--no-check", action="store_true",
                        help="skip loading the export back and comparing it with PyTorch (not recommended)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 written, 2 not)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the problem (or the help)
        return int(e.code or 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            out = _export(args)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, CheckpointError, ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> Path:
    if args.run is not None:
        model, labels, cfg = model_from_run(args.run)
        sizes = {"min_size": cfg.min_size, "max_size": cfg.max_size}
        dropout = cfg.dropout if args.dropout is None else args.dropout
        eos_coef = cfg.eos_coef
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            model, labels, sizes = model_from_checkpoint(args.checkpoint)
        random_weights = any("RANDOM" in str(w.message) for w in caught)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=1)
        dropout = PUBLISHED_DROPOUT if args.dropout is None else args.dropout
        eos_coef = 0.1
    if args.to == "onnx":
        return export_onnx(model, args.out, overwrite=args.overwrite, check=not args.no_check)
    hf_config(model, labels, dropout, eos_coef)  # refuses the tiny backbone before any bootstrap is computed
    if args.run is not None:
        card = run_card(args.run, model, labels)
    else:
        card = checkpoint_card(args.checkpoint, model, labels, dropout=dropout, random_weights=random_weights,
                               **sizes)
    return export_hf(model, labels, args.out, dropout=dropout, eos_coef=eos_coef, card=card,
                     overwrite=args.overwrite, check=not args.no_check, **sizes)


if __name__ == "__main__":
    sys.exit(main())
