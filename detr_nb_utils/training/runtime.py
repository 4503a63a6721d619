"""Where a run executes: the device, the random seeds, and the processes of a ``torchrun`` job.

Used by the engine and the evaluation (notebooks 02-05, ``python -m detr_nb_utils.training``), and by every
notebook's setup cell (the device).
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU (MPS only when asked for)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available here; use device='auto' or 'cpu'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return rank_world()[1] > 1


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()
