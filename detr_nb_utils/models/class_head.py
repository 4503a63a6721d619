"""Class-head surgery that keeps what a checkpoint knows: a dataset with its own K classes gets a
``class_embed`` of K + 1 rows in which every class whose name matches one of the checkpoint's classes starts from that
class's row, the others from the published initialisation, and the "no object" row is carried over.

The published code re-initialises nothing and fails on the size mismatch; Hugging Face re-initialises the whole
head (``class_head="reinit"`` here); whether starting matched classes from their rows helps is measured on the demo
world (notebook 07_your_dataset, benchmarks/RESULTS.md). Used by :func:`.checkpoint.adapt_state_dict`. The
checkpoint's class names come from the caller (COCO's: :data:`detr_nb_utils.data.categories.COCO_NAMES`), since
``models`` imports nothing from ``data``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

#: names other label spaces use for a COCO category, spelt differently: the PASCAL VOC classes (the commonest label
#: space after COCO's) whose names differ from their COCO category's only in spelling
ALIASES = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
           "diningtable": "dining table", "pottedplant": "potted plant"}


def normalise_name(name: str) -> str:
    """Case, spaces, underscores and hyphens ignored: ``"Traffic_Light"`` -> ``"traffic light"``; aliases applied."""
    key = re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()
    return ALIASES.get(key.replace(" ", ""), ALIASES.get(key, key))


def class_rows(names: Sequence[str], source: Mapping[int, str]) -> list[int | None]:
    """For each of a dataset's classes (``names``, in contiguous index order), the row of the checkpoint's class head
    it starts from: the id in ``source`` (row index -> name, e.g. COCO's id -> name) whose name matches
    (:func:`normalise_name`), or None (a fresh row)."""
    by_name = {normalise_name(n): i for i, n in source.items()}
    return [by_name.get(normalise_name(n)) for n in names]


@torch.no_grad()
def remap_class_head(weight: torch.Tensor, bias: torch.Tensor, rows: Sequence[int | None],
                     fresh_weight: torch.Tensor, fresh_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The new head's ``weight`` ``[K+1, D]`` and ``bias`` ``[K+1]``: row ``i < K`` is the checkpoint's row
    ``rows[i]`` (``weight`` ``[C+1, D]``, its last row "no object") or, where ``rows[i]`` is None, the fresh
    model's; row ``K`` is the checkpoint's "no object" row. Copies: the checkpoint is left as it was."""
    k = len(rows)
    if fresh_weight.shape[0] != k + 1:
        raise ValueError(f"the fresh head has {fresh_weight.shape[0]} rows, {k} classes need {k + 1}")
    bad = [r for r in rows if r is not None and not 0 <= r < weight.shape[0] - 1]
    if bad:
        raise ValueError(f"rows {bad} are not classes of the checkpoint's head (0..{weight.shape[0] - 2})")
    new_w, new_b = fresh_weight.clone(), fresh_bias.clone()
    for i, r in enumerate(rows):
        if r is not None:
            new_w[i], new_b[i] = weight[r], bias[r]
    new_w[k], new_b[k] = weight[-1], bias[-1]
    return new_w, new_b


def class_sources(names: Sequence[str], rows: Sequence[int | None], source: Mapping[int, str],
                  fresh_no_object: bool = False) -> pd.DataFrame:
    """Where each class's row came from, for the surgery report: ``name``, ``row`` (the checkpoint's, or empty)
    and ``from`` ("<source name>" or "fresh"), plus the "no object" row (carried, or fresh with
    ``fresh_no_object``, as when the whole head is re-initialised)."""
    table = pd.DataFrame({"name": [*names, "no object"],
                          "row": [*(r if r is not None else pd.NA for r in rows), pd.NA if fresh_no_object else "last"],
                          "from": [*(source[r] if r is not None else "fresh" for r in rows),
                                   "fresh" if fresh_no_object else "no object"]})
    return table.rename_axis("class index")
