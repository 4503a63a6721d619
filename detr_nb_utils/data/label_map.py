"""The label map: which category each row of the class head stands for (contiguous index <-> original id <-> name).

Two label spaces. ``"coco"``: the study's and the demo's; the head's row ``i`` IS COCO category id ``i`` (91 rows
plus "no object", ids 1..90 with gaps, never remapped; ARCHITECTURE.md, "Data conventions"). ``"dataset"``: a user's
own COCO-format dataset with any integer ids and any number K of categories; its categories, sorted by id, get the
contiguous indices 0..K-1 the model predicts, and every prediction is mapped back to the user's id before COCO
evaluation, so AP is reported in the user's ids.

A run folder stores its map as ``categories.json`` (:meth:`LabelMap.save`); :mod:`detr_nb_utils.predict` and
notebook 07_your_dataset read it back. Used by the engine (targets, evaluation), the class-head surgery and figures.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic
from .categories import COCO_NAMES

LABEL_SPACES = ("coco", "dataset")
#: the number of classes of COCO's label space: ids 0..90 (id 0 and the gaps unused), the published head's 91
COCO_NUM_CLASSES = 91


@dataclass(frozen=True)
class LabelMap:
    """``ids[i]`` and ``names[i]``: the category of the model's class index ``indices[i]``; ``num_classes``: the
    class head's rows without "no object". In the ``"coco"`` space ``indices == ids``; in ``"dataset"`` they are
    ``0..K-1`` in ascending id order."""

    label_space: str
    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.label_space not in LABEL_SPACES:
            raise ValueError(f"label_space {self.label_space!r} is not one of {LABEL_SPACES}")
        if len(self.ids) != len(self.names) or not self.ids:
            raise ValueError(f"a label map needs one name per id and at least one class; got {len(self.ids)} ids, "
                             f"{len(self.names)} names")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"category ids repeat: {sorted({i for i in self.ids if self.ids.count(i) > 1})}")

    @classmethod
    def coco(cls) -> LabelMap:
        """COCO's label space: index = COCO id, 91 classes."""
        return cls("coco", tuple(COCO_NAMES), tuple(COCO_NAMES.values()))

    @classmethod
    def from_categories(cls, categories: Iterable[Mapping]) -> LabelMap:
        """A dataset's label space from its ``categories`` records (``id``, ``name``), indexed in ascending id."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls("dataset", tuple(int(c["id"]) for c in cats), tuple(str(c["name"]) for c in cats))

    @property
    def indices(self) -> tuple[int, ...]:
        return self.ids if self.label_space == "coco" else tuple(range(len(self.ids)))

    @property
    def num_classes(self) -> int:
        return COCO_NUM_CLASSES if self.label_space == "coco" else len(self.ids)

    @property
    def index_names(self) -> dict[int, str]:
        """Class index -> name, for figures (in the ``"coco"`` space the same as ``COCO_NAMES``)."""
        return dict(zip(self.indices, self.names))

    def to_index(self, category_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Original category ids -> class indices (int64); an id outside the map raises ``KeyError`` naming it."""
        ids = np.asarray(category_ids, dtype=np.int64)
        if self.label_space == "coco":
            return ids
        lookup = {c: i for i, c in enumerate(self.ids)}
        try:
            return np.array([lookup[int(c)] for c in ids.ravel()], dtype=np.int64).reshape(ids.shape)
        except KeyError as e:
            raise KeyError(f"category id {e.args[0]} is not in the label map (ids {list(self.ids)})") from None

    def to_id(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Class indices (predictions) -> original category ids (int64)."""
        idx = np.asarray(indices, dtype=np.int64)
        return idx if self.label_space == "coco" else np.asarray(self.ids, dtype=np.int64)[idx]

    def to_dict(self) -> dict:
        return {"label_space": self.label_space, "num_classes": self.num_classes,
                "categories": [{"index": i, "id": c, "name": n}
                               for i, c, n in zip(self.indices, self.ids, self.names)]}

    def save(self, path: str | Path) -> Path:
        """Write ``categories.json`` (under a temporary name, then renamed)."""
        path = Path(path)
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        """Read a ``categories.json``; a damaged file is named, with what to do."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            cats = sorted(d["categories"], key=lambda c: int(c["index"]))
            m = cls(d["label_space"], tuple(int(c["id"]) for c in cats), tuple(str(c["name"]) for c in cats))
            ok = list(m.indices) == [int(c["index"]) for c in cats] and m.num_classes == d["num_classes"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a label map ({type(e).__name__}: {e}); it is written by every run, "
                             f"delete the run folder and train again") from None
        if not ok:
            raise ValueError(f"{path}: its indices or num_classes do not match its label space {m.label_space!r}")
        return m
