"""Class-head surgery by name: matching names start from the checkpoint's rows, bit for bit,
the others from the fresh initialisation, and "no object" is carried over; the report says where each row came from."""
from __future__ import annotations

import pytest
import torch

from detr_nb_utils.data.categories import COCO_NAMES
from detr_nb_utils.models.class_head import class_rows, class_sources, normalise_name, remap_class_head
from detr_nb_utils.models.detr import TINY_DETR, build_detr


def test_names_match_whatever_the_spelling():
    assert normalise_name(" Traffic_Light ") == normalise_name("traffic-light") == "traffic light"
    assert normalise_name("Motorbike") == "motorcycle" and normalise_name("TV Monitor") == "tv"
    assert class_rows(["Car", "motorbike", "unicorn", "Dining_Table"], COCO_NAMES) == [3, 4, None, 67]


def test_surgery_carries_matching_rows_and_no_object():
    torch.manual_seed(0)
    source = build_detr(**TINY_DETR)  # 91 classes: COCO's ids
    target = build_detr(**{**TINY_DETR, "num_classes": 3})
    names = ["dog", "widget", "person"]
    rows = class_rows(names, COCO_NAMES)
    w, b = remap_class_head(source.class_embed.weight, source.class_embed.bias, rows,
                            target.class_embed.weight, target.class_embed.bias)
    assert w.shape == (4, 64) and b.shape == (4,)
    assert torch.equal(w[0], source.class_embed.weight[18]) and torch.equal(w[2], source.class_embed.weight[1])
    assert torch.equal(w[1], target.class_embed.weight[1]) and torch.equal(b[1], target.class_embed.bias[1])
    assert torch.equal(w[3], source.class_embed.weight[-1]) and torch.equal(b[3], source.class_embed.bias[-1])
    table = class_sources(names, rows, COCO_NAMES)
    assert list(table["from"]) == ["dog", "fresh", "person", "no object"]
    with pytest.raises(ValueError, match="rows \\[95\\] are not classes"):
        remap_class_head(source.class_embed.weight, source.class_embed.bias, [95, None, None],
                         target.class_embed.weight, target.class_embed.bias)
    with pytest.raises(ValueError, match="2 classes need 3"):
        remap_class_head(source.class_embed.weight, source.class_embed.bias, [1, 2],
                         target.class_embed.weight, target.class_embed.bias)
