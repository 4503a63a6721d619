"""For tests that run the engine end to end: a run configuration small enough for seconds on a CPU (the demo
profile's tiny backbone, frozen, and a smaller transformer from random weights, on 8 synthetic images: 4 train,
3 val), and a second process holding a run folder's lock."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

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


# a second process that takes the lock, says so, and holds it until its stdin closes
_HOLDER = """
import sys
from detr_nb_utils.training.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def lock_holder():
    """``lock_holder(run_dir)``: a second process, returned once it holds ``run_dir``'s lock, which it keeps until
    its stdin is closed; killed after the test if still running. Import it into a test module to use it."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked", f"the lock holder did not lock {run_dir}"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
