"""Write the parity fixture ``tests/data/parity/`` from the PUBLISHED DETR source (facebookresearch/detr).

Run by hand, never in CI: it needs the published source, which this repository does not ship (only the numbers
it produces are committed). Get the source at the pinned commit, then run from the repository root::

    git --git-dir=<mirror of github.com/facebookresearch/detr> archive 29901c51d7fe8712168b8d0d64351170bc0f83e0 \\
        | tar -x -C /tmp/detr_published
    python tools/make_parity_fixture.py --published /tmp/detr_published --out tests/data/parity

What it writes (read by ``tests/test_parity.py``, every ``.pt`` loadable with ``torch.load(weights_only=True)``):

- ``inputs.pt``: ``images`` float32 [2, 3, 96, 128] (a 3x96x128 and a 3x80x112 image, padded bottom/right by the
  published ``nested_tensor_from_tensor_list``), ``mask`` bool [2, 96, 128] (True on padding), ``targets``
  (per image ``labels`` int64 COCO category ids, ``boxes`` float32 normalised cx, cy, w, h; 3 boxes and 1 box);
- ``dec{L}_q{Q}.pt`` for (L, Q) = (6, 100), (3, 100), (3, 50): the published ``DETR`` (built from an
  argparse namespace as its ``models.detr.build`` does: ResNet-50 without pretrained weights, 91 classes,
  aux_loss on, masks off) filled with the rule of ``tests/parity_weights.py``, run in fp32 on the CPU in eval mode:
  ``state_dict_shapes`` (the published model's keys, in order, and shapes), ``weights_sha256`` (of the rule
  weights it ran with, ``parity_weights.weights_digest``), ``outputs`` (``pred_logits``
  [2, Q, 92], ``pred_boxes`` [2, Q, 4], ``aux_outputs``: one dict per layer 0..L-2), ``indices`` (the published
  ``HungarianMatcher``'s result per layer, keyed by loss suffix: ``""`` for the final layer, ``"_0"``.. for the
  auxiliary ones; per image ``(pred_idx, tgt_idx)`` int64), ``losses`` (every term the published ``SetCriterion``
  returns), ``weight_dict``, ``diagnostics`` (per layer and image the matching's margin: how much more the best
  different assignment costs; per layer the smallest gap between a query's two largest logits: together they bound
  the output differences under which matching and argmax counts cannot change) and ``provenance``;
- ``transforms.json``: for every image of ``tests/data/coco_sample``, loaded as the published ``CocoDetection`` /
  ``ConvertCocoPolysToMask`` do, the published ``datasets/transforms.py`` applied: the val pipeline
  (``make_coco_transforms("val")``: ``RandomResize([800], max_size=1333)``, ``ToTensor``, ``Normalize``),
  ``resize`` at 480 and 800 with max_size 1333, and ``hflip``: output size (h, w), boxes absolute x1, y1, x2, y2
  and, after the published ``Normalize``, normalised cx, cy, w, h.

The 3/100 and 3/50 models get the rule's weights for their keys, which is checked here to equal the published
surgery of the 6/100 weights (the first 3 decoder layers, the first 50 query embeddings).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from parity_weights import RULE_VERSION, rule_state_dict, weights_digest  # tests/ is not a package

PUBLISHED_COMMIT = "29901c51d7fe8712168b8d0d64351170bc0f83e0"
VARIANTS = ((6, 100), (3, 100), (3, 50))
NUM_CLASSES = 91
IMAGE_SIZES = ((96, 128), (80, 112))  # (h, w) of the two images; the batch is padded to the first
TARGETS = (  # COCO category ids and normalised (cx, cy, w, h)
    ([1, 18, 62], [[0.30, 0.40, 0.20, 0.30], [0.60, 0.55, 0.40, 0.50], [0.78, 0.20, 0.12, 0.16]]),
    ([3], [[0.50, 0.55, 0.60, 0.40]]),
)
IMAGE_SEED = 20200526  # the images' pixels (DETR's arXiv date)
FORWARD_SEED = 0
PUBLISHED_FILES = ("models/detr.py", "models/backbone.py", "models/transformer.py", "models/position_encoding.py",
                   "models/matcher.py", "util/box_ops.py", "util/misc.py", "datasets/coco.py",
                   "datasets/transforms.py")
COCO_SAMPLE = REPO / "tests" / "data" / "coco_sample"
ANN_FILE = "annotations/instances_val2017_sample.json"
TRANSFORM_SCALES = (480, 800)
MAX_SIZE = 1333
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def import_published(root: Path) -> dict:
    """The published modules, imported from ``root`` (its ``models``, ``util``, ``datasets`` packages).

    Pretrained weights are turned off without touching the source: ``Backbone`` asks torchvision for
    ``pretrained=is_main_process()``, so that name is replaced in the imported module by a function returning False.
    """
    if not (root / "models" / "detr.py").is_file():
        raise SystemExit(f"--published {root}: no models/detr.py there; extract the published source first")
    sys.path.insert(0, str(root))
    mods = {name: importlib.import_module(name) for name in
            ("models.backbone", "models.detr", "models.matcher", "util.misc", "util.box_ops",
             "datasets.coco", "datasets.transforms")}
    for name, mod in mods.items():  # the names must come from root, not from another package on sys.path
        if not Path(mod.__file__).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"{name} was imported from {mod.__file__}, not from {root}")
    mods["models.backbone"].is_main_process = lambda: False
    return mods


def published_args(dec_layers: int, num_queries: int) -> argparse.Namespace:
    """The namespace ``models.detr.build`` reads: the published ``main.py`` defaults, COCO, no masks."""
    return argparse.Namespace(
        dataset_file="coco", device="cpu", masks=False, frozen_weights=None, aux_loss=True,
        backbone="resnet50", dilation=False, position_embedding="sine", lr_backbone=1e-5,
        hidden_dim=256, dropout=0.1, nheads=8, dim_feedforward=2048, enc_layers=6, dec_layers=dec_layers,
        pre_norm=False, num_queries=num_queries,
        set_cost_class=1, set_cost_bbox=5, set_cost_giou=2,
        bbox_loss_coef=5, giou_loss_coef=2, mask_loss_coef=1, dice_loss_coef=1, eos_coef=0.1)


def make_image(h: int, w: int, boxes: list[list[float]], gen: torch.Generator) -> torch.Tensor:
    """A normalised-image-like float32 [3, h, w]: colour gradients, noise, and a flat colour patch per box (so
    feature positions differ, as in a photo)."""
    yy = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    xx = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    image = torch.stack([0.5 * xx, 0.5 * yy, 0.3 * xx * yy]) + 0.3 * torch.randn(3, h, w, generator=gen)
    for cx, cy, bw, bh in boxes:
        x0, x1 = int((cx - bw / 2) * w), int((cx + bw / 2) * w)
        y0, y1 = int((cy - bh / 2) * h), int((cy + bh / 2) * h)
        image[:, y0:y1, x0:x1] += 2.0 * torch.randn(3, 1, 1, generator=gen)
    return image


def make_inputs(pub: dict) -> dict:
    """Images padded by the published ``nested_tensor_from_tensor_list``, mask True on padding, and targets."""
    gen = torch.Generator().manual_seed(IMAGE_SEED)
    images = [make_image(h, w, boxes, gen) for (h, w), (_, boxes) in zip(IMAGE_SIZES, TARGETS)]
    batch = pub["util.misc"].nested_tensor_from_tensor_list(images)
    targets = [{"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes, dtype=torch.float32)}
               for labels, boxes in TARGETS]
    return {"images": batch.tensors.contiguous(), "mask": batch.mask.contiguous(), "targets": targets}


def build_published(pub: dict, dec_layers: int, num_queries: int):
    with warnings.catch_warnings():  # torchvision's notice that `pretrained` is deprecated
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model, criterion, _ = pub["models.detr"].build(published_args(dec_layers, num_queries))
    return model, criterion


def surgery(sd6: dict, dec_layers: int, num_queries: int) -> dict:
    """The published-checkpoint surgery of a variant: decoder layers >= dec_layers dropped, first queries kept."""
    out = {}
    for k, v in sd6.items():
        if k.startswith("transformer.decoder.layers.") and int(k.split(".")[3]) >= dec_layers:
            continue
        out[k] = v[:num_queries] if k == "query_embed.weight" else v
    return out


def assignment_margin(cost: np.ndarray) -> float:
    """How much more the best assignment differing from the optimum costs (inf when the optimum is unique by
    construction, e.g. no targets): forbid each matched pair in turn and re-solve."""
    rows, cols = linear_sum_assignment(cost)
    best, margin = cost[rows, cols].sum(), math.inf
    for i, j in zip(rows, cols):
        c = cost.copy()
        c[i, j] = 1e9
        r2, c2 = linear_sum_assignment(c)
        margin = min(margin, float(c[r2, c2].sum() - best))
    return margin


def diagnostics(pub: dict, layers: dict, targets: list[dict]) -> dict:
    """Per layer (loss suffix): the matching margin per image (the published cost, in float64) and the smallest gap
    between the two largest logits of any query (what decides cardinality_error and class_error)."""
    box_ops = pub["util.box_ops"]
    margins, gaps = {}, {}
    for suffix, out in layers.items():
        margins[suffix] = []
        for b, t in enumerate(targets):
            boxes, prob = out["pred_boxes"][b].double(), out["pred_logits"][b].double().softmax(-1)
            tgt = t["boxes"].double()
            giou = box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(boxes), box_ops.box_cxcywh_to_xyxy(tgt))
            cost = 5 * torch.cdist(boxes, tgt, p=1) - prob[:, t["labels"]] - 2 * giou
            margins[suffix].append(assignment_margin(cost.numpy()))
        top2 = out["pred_logits"].topk(2, dim=-1).values
        gaps[suffix] = float((top2[..., 0] - top2[..., 1]).min())
    return {"match_margin": margins, "top2_logit_gap": gaps}


def run_variant(pub: dict, dec_layers: int, num_queries: int, inputs: dict,
                sd6: dict | None) -> tuple[dict, dict]:
    """The fixture record of one variant, and the weights it ran with."""
    model, criterion = build_published(pub, dec_layers, num_queries)
    weights = rule_state_dict(model.state_dict())
    if sd6 is not None:  # the rule gives every variant the published surgery of the 6/100 weights
        expected = surgery(sd6, dec_layers, num_queries)
        assert list(expected) == list(weights), "state-dict keys differ from the 6/100 model's surgery"
        bad = [k for k in weights if not torch.equal(weights[k], expected[k])]
        assert not bad, f"rule weights differ from the surgery of the 6/100 weights: {bad[:5]}"
    model.load_state_dict(weights, strict=True)
    model.eval()
    criterion.eval()
    recorded = []
    criterion.matcher.register_forward_hook(lambda _m, _i, out: recorded.append(out))
    torch.manual_seed(FORWARD_SEED)
    with torch.no_grad():
        samples = pub["util.misc"].NestedTensor(inputs["images"], inputs["mask"])
        outputs = model(samples)
        losses = criterion(outputs, inputs["targets"])
    suffixes = [""] + [f"_{i}" for i in range(dec_layers - 1)]  # the order SetCriterion calls the matcher in
    assert len(recorded) == len(suffixes)
    layers = {"": outputs, **{f"_{i}": a for i, a in enumerate(outputs["aux_outputs"])}}
    return {
        "dec_layers": dec_layers, "num_queries": num_queries, "num_classes": NUM_CLASSES,
        "state_dict_shapes": {k: list(v.shape) for k, v in weights.items()},
        "weights_sha256": weights_digest(weights),
        "outputs": {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"],
                    "aux_outputs": [{"pred_logits": a["pred_logits"], "pred_boxes": a["pred_boxes"]}
                                    for a in outputs["aux_outputs"]]},
        "indices": {s: [(i.clone(), j.clone()) for i, j in idx] for s, idx in zip(suffixes, recorded)},
        "losses": {k: v.detach().clone().float().reshape(()) for k, v in losses.items()},
        "weight_dict": {k: float(v) for k, v in criterion.weight_dict.items()},
        "diagnostics": diagnostics(pub, layers, inputs["targets"]),
    }, weights


def provenance(root: Path) -> dict:
    import torchvision
    return {"published_repo": "github.com/facebookresearch/detr", "published_commit": PUBLISHED_COMMIT,
            "published_sha256": {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in PUBLISHED_FILES},
            "rule_version": RULE_VERSION, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "generated_by": "tools/make_parity_fixture.py"}


def _boxes(t: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in t.reshape(-1, 4).tolist()]


def transforms_record(pub: dict, image, target: dict) -> dict:
    """The published deterministic transforms of one (PIL image, prepared target)."""
    T = pub["datasets.transforms"]
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    steps = {"val": T.RandomResize([800], max_size=MAX_SIZE),  # the resize of make_coco_transforms("val")
             **{f"resize_{s}": (lambda im, tg, s=s: T.resize(im, tg, s, MAX_SIZE)) for s in TRANSFORM_SCALES},
             "hflip": T.hflip}
    out = {}
    for name, step in steps.items():
        im, tg = step(image, target)
        tensor, tg_norm = normalize(im, tg)
        out[name] = {"size": [int(v) for v in tensor.shape[-2:]], "boxes_xyxy": _boxes(tg["boxes"]),
                     "boxes_cxcywh": _boxes(tg_norm["boxes"])}
    # the published val pipeline end to end must agree with its resize step above
    tensor, tg_val = pub["datasets.coco"].make_coco_transforms("val")(image, target)
    assert list(tensor.shape[-2:]) == out["val"]["size"] and _boxes(tg_val["boxes"]) == out["val"]["boxes_cxcywh"]
    return out


def transforms_fixture(pub: dict, coco_dir: Path) -> dict:
    dataset = pub["datasets.coco"].CocoDetection(coco_dir / "images", coco_dir / ANN_FILE, transforms=None,
                                                 return_masks=False)
    images = []
    for index, image_id in enumerate(dataset.ids):
        image, target = dataset[index]  # PIL RGB, target prepared by the published ConvertCocoPolysToMask
        images.append({"image_id": int(image_id), "file_name": dataset.coco.imgs[image_id]["file_name"],
                       "orig_size": [int(v) for v in target["orig_size"]],
                       "labels": [int(v) for v in target["labels"]], "boxes_xyxy": _boxes(target["boxes"]),
                       **transforms_record(pub, image, target)})
    return {"description": "published datasets/transforms.py on tests/data/coco_sample; sizes (h, w) in pixels, "
                           "boxes_xyxy absolute pixels, boxes_cxcywh normalised by the output size",
            "max_size": MAX_SIZE, "steps": ["val", *[f"resize_{s}" for s in TRANSFORM_SCALES], "hflip"],
            "annotations": ANN_FILE, "images": images}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--published", type=Path, required=True, help="extracted facebookresearch/detr source")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "parity")
    ap.add_argument("--coco-sample", type=Path, default=COCO_SAMPLE, help="COCO-layout folder for transforms.json")
    args = ap.parse_args(argv)
    root = args.published.resolve()
    pub = import_published(root)
    torch.set_grad_enabled(False)
    args.out.mkdir(parents=True, exist_ok=True)
    prov = provenance(root)
    inputs = make_inputs(pub)
    torch.save({**inputs, "provenance": prov}, args.out / "inputs.pt")
    sd6 = None
    results = {}
    for dec_layers, num_queries in VARIANTS:
        result, weights = run_variant(pub, dec_layers, num_queries, inputs, sd6)
        sd6 = weights if sd6 is None else sd6
        results[(dec_layers, num_queries)] = result
        torch.save({**result, "provenance": prov}, args.out / f"dec{dec_layers}_q{num_queries}.pt")
        d = result["diagnostics"]
        print(f"dec{dec_layers}_q{num_queries}: losses " + ", ".join(
            f"{k}={float(v):.5f}" for k, v in result["losses"].items() if not k[-1].isdigit())
            + f"; min matching margin {min(min(m) for m in d['match_margin'].values()):.2e}"
            + f", min top-2 logit gap {min(d['top2_logit_gap'].values()):.2e}")
    # published property: a 3-layer model's final output is the 6-layer model's third layer
    six, three = results[(6, 100)]["outputs"], results[(3, 100)]["outputs"]
    for key in ("pred_logits", "pred_boxes"):
        diff = (six["aux_outputs"][2][key] - three[key]).abs().max().item()
        print(f"published 3/100 final {key} vs 6/100 layer 2: max |diff| {diff:.1e}")
    if (args.coco_sample / ANN_FILE).is_file():
        fixture = transforms_fixture(pub, args.coco_sample)
        fixture["provenance"] = prov
        (args.out / "transforms.json").write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"transforms.json: {len(fixture['images'])} images from {args.coco_sample}")
    else:
        print(f"no {args.coco_sample / ANN_FILE}: transforms.json not written")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
