"""A run configuration small enough for tests that run the engine end to end (seconds on a CPU): the demo profile's
tiny backbone, frozen, and a smaller transformer from random weights, on 8 synthetic images (4 train, 3 val)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.training.config import RunConfig, make_config

TINY = dict(checkpoint=None, enc_layers=1, dec_layers=2, hidden_dim=64, nheads=4, dim_feedforward=128, num_queries=10,
            lr_backbone=0.0)


def tiny_config(root: Path, **changes) -> RunConfig:
    """The tiny run's config, its data made under ``root`` (``coco/``, ``split/``), its runs in ``root/runs``."""
    make_synthetic_coco(root / "coco", n_images=8, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(root / "coco"), split_dir=str(root / "split"), out_dir=str(root / "runs"),
                      n_train=4, n_val=3, min_size=64, max_size=96, train_scales=(64,), epochs=1, precision="fp32",
                      progress=False, num_workers=0)
    return dataclasses.replace(cfg, **TINY, **changes)
