"""Object queries: which 50 of the checkpoint's 100 to keep, and what each query slot predicts (paper Fig. 7).

The 3-layer / 50-query variant keeps 50 of the 100 query embeddings (``RunConfig.query_indices``). The original
study kept the first 50; :func:`select_queries` also offers the 50 slots the Hungarian matcher assigns to an object most
often on the train split (:func:`query_match_counts`, counted on the original 6-layer / 100-query model) and 50
evenly spread slots. :func:`query_usage` records every prediction of every slot, so the paper's Fig. 7 (where
each slot puts its boxes, and how big they are) can be drawn before and after the reduction to 50
(:func:`detr_nb_utils.notebook.figures_queries.plot_query_usage`). Used by 05_reduced_queries and 06_analysis.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.coco import build_dataset, collate_fn
from ..models.fast import model_forward
from ..models.matcher import HungarianMatcher
from ..models.postprocess import best_real_class
from ..training.config import RunConfig

STRATEGIES = ("first", "most_matched", "spread")
RECORD_COLUMNS = ("image_id", "query", "slot", "cx", "cy", "w", "h", "score", "label", "is_object")


def analysis_loader(cfg: RunConfig, data, split: str = "train") -> DataLoader:
    """The ``split`` images with the *validation* transforms (no augmentation), in order, ``eval_batch_size`` per
    batch: what :func:`query_match_counts` counts on. ``data``: :class:`detr_nb_utils.training.data_setup.DataSetup`."""
    if split not in ("train", "val"):
        raise ValueError(f"analysis_loader: split must be 'train' or 'val', got {split!r}")
    dataset = build_dataset(*data.files(split), "val",
                            max_images=cfg.max_train_images if split == "train" else cfg.max_val_images,
                            val_size=cfg.min_size, max_size=cfg.max_size)
    return DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate_fn,
                      num_workers=cfg.num_workers)


def _batches(model: nn.Module, loader: Iterable, device: torch.device | str, amp_dtype: torch.dtype | None,
             progress: bool, desc: str):
    """Yield ``(outputs, targets)`` per batch: eval-mode forward under inference mode, fp32 outputs on ``device``."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, mask, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
                outputs = model_forward(model, images.to(device), mask.to(device), amp_dtype)
                yield outputs, [t | {k: t[k].to(device) for k in ("labels", "boxes")} for t in targets]
    finally:
        model.train(was_training)


def query_match_counts(model: nn.Module, loader: Iterable, matcher: HungarianMatcher | None = None,
                       device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                       progress: bool = False) -> np.ndarray:
    """How often each query slot is matched to a ground-truth object, int64 ``[num_queries]``.

    Every batch of ``loader`` (``(images [B,3,H,W], mask [B,H,W], targets)``, e.g. :func:`analysis_loader`) goes
    through ``model`` in eval mode; ``matcher`` (default: the published costs 1 / 5 / 2) assigns the final
    layer's predictions to the targets, and each matched slot counts once. With ``num_queries`` at least the
    objects of every image, the counts add up to the number of ground-truth boxes.
    """
    matcher = matcher or HungarianMatcher()
    counts = np.zeros(model.num_queries, dtype=np.int64)
    for outputs, targets in _batches(model, loader, device, amp_dtype, progress, "matching"):
        final = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
        for pred_idx, _ in matcher(final, targets):
            counts += np.bincount(pred_idx.numpy(), minlength=model.num_queries)
    return counts


def select_queries(strategy: str, num_queries: int = 50, total: int = 100,
                   counts: Sequence[int] | np.ndarray | None = None) -> list[int]:
    """``num_queries`` of ``total`` query slots, ascending: the value for ``RunConfig.query_indices``.

    ``"first"``: ``0 … num_queries-1`` (the original study's choice). ``"most_matched"``: the slots with the highest
    ``counts`` (from :func:`query_match_counts`, length ``total``), ties broken by the lower index.
    ``"spread"``: evenly spread from ``0`` to ``total-1`` (``np.linspace``, rounded).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"select_queries: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not (isinstance(num_queries, int) and isinstance(total, int) and 1 <= num_queries <= total):
        raise ValueError(f"select_queries: num_queries must be an integer in 1..total ({total}), got {num_queries!r}")
    if strategy == "first":
        return list(range(num_queries))
    if strategy == "spread":
        chosen = np.floor(np.linspace(0, total - 1, num_queries) + 0.5).astype(int)
        assert len(set(chosen)) == num_queries  # steps of at least 1 never round onto each other
        return [int(i) for i in chosen]
    if counts is None:
        raise ValueError("select_queries: counts is required for strategy='most_matched' "
                         "(pass query_match_counts(...) of the original model)")
    counts = np.asarray(counts)
    if counts.shape != (total,):
        raise ValueError(f"select_queries: counts must have one entry per slot (total={total}), got shape "
                         f"{counts.shape}")
    order = np.argsort(-counts, kind="stable")  # stable: equal counts keep index order
    return sorted(int(i) for i in order[:num_queries])


def query_usage(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                amp_dtype: torch.dtype | None = None, query_indices: Sequence[int] | None = None,
                progress: bool = False) -> pd.DataFrame:
    """Every final-layer prediction of every query slot over ``loader``: one row per (image, query).

    Columns: ``image_id``; ``query`` (the model's index, ``0 … Q-1``); ``slot`` (the checkpoint's query it came
    from: ``query_indices[query]``, default ``query``, so models before and after a reduction share slot ids);
    ``cx, cy, w, h`` (the box, normalised to the unpadded image, so centres lie in the unit square as in the
    paper's Fig. 7); ``score`` and ``label`` (the best *real* class's softmax probability and its category id,
    as COCO evaluation scores it); ``is_object`` (the argmax over all classes is not "no object", the published
    cardinality rule). :func:`usage_summary` turns it into one row per slot.
    """
    slots = np.arange(model.num_queries) if query_indices is None else np.asarray(query_indices)
    if slots.shape != (model.num_queries,):
        raise ValueError(f"query_usage: query_indices must list the model's {model.num_queries} queries, "
                         f"got {len(slots)}")
    frames = [_records(outputs, targets, slots)
              for outputs, targets in _batches(model, loader, device, amp_dtype, progress, "query usage")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))


def _records(outputs: dict, targets: list[dict], slots: np.ndarray) -> pd.DataFrame:
    """One batch's predictions as rows of :data:`RECORD_COLUMNS`."""
    logits = outputs["pred_logits"]  # (B, Q, K+1)
    score, label = (t.cpu() for t in best_real_class(logits))
    is_object = (logits.argmax(-1) != logits.shape[-1] - 1).cpu()
    boxes = outputs["pred_boxes"].float().cpu()  # (B, Q, 4) cx, cy, w, h
    b, q = score.shape
    image_ids = [int(t["image_id"]) if "image_id" in t else -1 for t in targets]
    return pd.DataFrame({"image_id": np.repeat(image_ids, q), "query": np.tile(np.arange(q), b),
                         "slot": np.tile(slots, b), **{c: boxes[..., i].flatten().numpy()
                                                     for i, c in enumerate(("cx", "cy", "w", "h"))},
                         "score": score.flatten().numpy(), "label": label.flatten().numpy(),
                         "is_object": is_object.flatten().numpy()})


def usage_summary(records: pd.DataFrame, score_threshold: float | None = None) -> pd.DataFrame:
    """Per slot (index ``slot``): ``predictions``, ``objects`` and ``object_rate`` (the share of images where the
    slot predicts an object), ``mean_score``, and the median box ``cx, cy, w, h`` over all its predictions.

    An object is ``is_object`` (argmax not "no object") when ``score_threshold`` is None, else ``score >=
    score_threshold``. ``records``: from :func:`query_usage`.
    """
    hit = records["is_object"] if score_threshold is None else records["score"] >= score_threshold
    g = records.assign(object=hit.astype(int)).groupby("slot")
    out = pd.DataFrame({"predictions": g.size(), "objects": g["object"].sum(), "mean_score": g["score"].mean()})
    out["object_rate"] = out["objects"] / out["predictions"]
    return out.join(g[["cx", "cy", "w", "h"]].median())


def query_choice_table(counts, choices: Mapping[str, Sequence[int]], epoch0: Mapping[str, Mapping] | None = None
                       ) -> pd.DataFrame:
    """Per strategy of 05: how many of the train split's matches its 50 slots held in the original model, the
    slots themselves, and (``epoch0``: strategy -> :func:`detr_nb_utils.training.engine.evaluate_checkpoint` metrics)
    AP and AP50 at epoch 0, points."""
    total = max(int(sum(counts)), 1)
    rows = {}
    for s, slots in choices.items():
        rows[s] = {"slots": len(slots), "matches kept": int(sum(counts[i] for i in slots)),
                   "share of matches": sum(counts[i] for i in slots) / total,
                   "query slots": " ".join(map(str, slots))}
        if epoch0 and s in epoch0:
            rows[s] |= {"epoch-0 AP": 100 * epoch0[s]["AP"], "epoch-0 AP50": 100 * epoch0[s]["AP50"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")
