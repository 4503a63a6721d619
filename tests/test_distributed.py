"""Two processes with DistributedDataParallel (gloo, CPU) train the same weights as one process with the same
global batch.

Why they can match: each process computes the loss on its half of the global batch; DDP averages the gradients. The
box losses divide by ``num_boxes`` averaged over the processes (as published), so the average of the two halves' box
gradients is exactly the one-process gradient. The classification loss is PyTorch's weighted mean *per process*
(divided by that process's sum of class weights: 1 per matched query, 0.1 per "no object"), so it equals the
one-process loss only when both halves hold the same number of boxes; the images here have two boxes each so that the
comparison is tight; the num_boxes averaging is checked on its own with unequal halves. (With unequal halves the
published two-process loss differs from the one-process loss; that is the published behaviour, not a bug of this
engine.) Dropout is off and every image has the same size, so no random numbers and no padding differ between the
runs. What remains is the order of floating-point sums (gradient all-reduce, per-half reductions), ~1e-7 relative in
the gradients. AdamW divides each gradient by its running RMS, so where a gradient is itself at rounding-noise level
(measured: the query/key rows of the encoder's self-attention, which sees only 2x2 feature positions at 64 px) the
noise is amplified up to a fraction of one step of size lr. Measured on a 2-core AMD EPYC after four steps: largest
difference 2.6e-6, difference/update norm ratio 1.6e-4, elements differing by more than 1e-6: 171 of 23.8 M. The test
allows ``ATOL`` = a quarter of one AdamW step (lr/4 = 2.5e-5) for any weight and ``REL`` = 1e-3 for the whole update.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from detr_nb_utils.data.coco import collate_fn
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training.config import RunConfig

GLOBAL_BATCH, IMAGES, EPOCHS = 4, 8, 2
ATOL, REL = 2.5e-5, 1e-3
CFG = RunConfig(checkpoint=None, enc_layers=1, dec_layers=2, hidden_dim=64, nheads=4, dim_feedforward=128,
                num_queries=10, dropout=0.0, precision="fp32", progress=False, num_workers=0)


def _dataset() -> list[tuple[torch.Tensor, dict]]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(IMAGES):
        centres = torch.rand(2, 2, generator=g) * 0.5 + 0.25
        sizes = torch.rand(2, 2, generator=g) * 0.3 + 0.1
        target = {"boxes": torch.cat([centres, sizes], 1), "labels": torch.tensor([1, 18]),
                  "image_id": torch.tensor(i + 1), "orig_size": torch.tensor([64, 64]), "size": torch.tensor([64, 64])}
        items.append((torch.randn(3, 64, 64, generator=g), target))
    return items


def _train(rank: int, world: int, port: int, out: str) -> None:
    """Train EPOCHS epochs on a 1/world share of every global batch; rank 0 saves the weights to ``out``."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = RunConfig(**{**CFG.to_dict(), "batch_size": GLOBAL_BATCH // world})
    torch.manual_seed(0)
    model, criterion, _ = engine.build_model(cfg, torch.device("cpu"))
    optimizer = engine.build_optimizer(model, cfg)
    wrapped = DistributedDataParallel(model) if world > 1 else model
    data = _dataset()
    # rank r takes items r, r+world, ...: the two processes' batches together are the one-process batch
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=DistributedSampler(data, world, rank, shuffle=False),
                        collate_fn=collate_fn, drop_last=True)
    for epoch in range(1, EPOCHS + 1):
        engine.train_one_epoch(wrapped, criterion, loader, optimizer, "cpu", epoch, cfg)
    if rank == 0:
        torch.save({"model": model.state_dict(), "box_losses": _box_losses(criterion, rank, world)}, out)
    else:
        _box_losses(criterion, rank, world)
    if world > 1:
        dist.destroy_process_group()


def _box_losses(criterion, rank: int, world: int) -> torch.Tensor:
    """``loss_bbox``, ``loss_giou`` of fixed predictions for 4 images holding 1, 3, 1, 3 boxes, each process
    scoring its share (unequal box counts), averaged over processes as DDP averages gradients. Equal to the
    one-process value only if ``num_boxes`` is averaged over the processes."""
    g = torch.Generator().manual_seed(1)
    outputs = {"pred_logits": torch.randn(4, 10, 92, generator=g), "pred_boxes": torch.rand(4, 10, 4, generator=g)}
    targets = [{"labels": torch.full((n,), 1), "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.1} for n in (1, 3, 1, 3)]
    mine = list(range(rank, 4, world))
    losses = criterion({k: v[mine] for k, v in outputs.items()}, [targets[i] for i in mine])
    values = torch.stack([losses["loss_bbox"], losses["loss_giou"]]).detach()
    if world > 1:
        dist.all_reduce(values)
    return values / world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    threads = torch.get_num_threads()
    try:
        _train(0, 1, 0, str(tmp_path / "one.pth"))
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_train, args=(2, _free_port(), str(tmp_path / "two.pth")), nprocs=2, join=True)
    one = torch.load(tmp_path / "one.pth", weights_only=True)
    two = torch.load(tmp_path / "two.pth", weights_only=True)
    assert torch.allclose(one["box_losses"], two["box_losses"], rtol=1e-6)
    one, two = one["model"], two["model"]
    torch.manual_seed(0)
    start = engine.build_model(CFG, torch.device("cpu"))[0].state_dict()
    update = sum(((one[k] - start[k]).float() ** 2).sum() for k in one).sqrt()
    gap = sum(((one[k] - two[k]).float() ** 2).sum() for k in one).sqrt()
    assert update > 0.01  # training moved the weights, so agreeing means something
    diffs = {k: (one[k].float() - two[k].float()).abs().max().item() for k in one}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= ATOL, f"{worst} differs by {diffs[worst]:.3g}"
    assert gap <= REL * update, f"weights differ by {gap / update:.3g} of the update"


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_train_cli_under_torchrun_writes_one_run_folder_with_gathered_evaluation(tmp_path):
    make_synthetic_coco(tmp_path / "coco", n_images=7, seed=0, image_size=(64, 96))
    cfg = RunConfig(**{**CFG.to_dict(), "data_root": str(tmp_path / "coco"), "split_dir": str(tmp_path / "split"),
                        "out_dir": str(tmp_path / "runs"), "n_train": 4, "n_val": 3, "min_size": 64, "max_size": 96,
                        "train_scales": (64,), "epochs": 1, "batch_size": 1, "lr_backbone": 0.0})
    cfg.to_json(tmp_path / "run.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "detr_nb_utils.training", "--config", str(tmp_path / "run.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert lines[1]["train_steps"] == 2  # 4 images, 2 processes, 1 image each per step
    assert all(x["val_num_images"] == 3 for x in lines)  # the sampler's padding duplicate counted once
