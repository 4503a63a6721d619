"""Where a run executes: the device, the random seeds, the TF32 switches, and the processes of a ``torchrun`` job.

Used by the engine and the evaluation (notebooks 02-05, ``python -m detr_nb_utils.training``), and by every
notebook's setup cell (the device).
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU (MPS only when asked for). A CUDA device
    this machine does not have (no CUDA, or ``cuda:N`` past its last GPU) is refused here, before a run starts."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here (torch {torch.__version__}, built for "
                         f"CUDA {torch.version.cuda}); use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available here; use device='auto' or 'cpu'")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device={device!r} but this machine has {count} CUDA device(s), cuda:0 to "
                         f"cuda:{count - 1}; use one of those, or 'cuda' for the current one")
    return resolved


def describe_device(device: torch.device | str) -> str:
    """``device`` as a run's header line names it: ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"cpu"``."""
    device = torch.device(device)
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


#: the field of a run's metrics rows on CUDA: :func:`peak_memory_mb` over the epoch (training and evaluation)
PEAK_MEMORY_FIELD = "peak_memory_mb"


def reset_peak_memory(device: torch.device | str) -> None:
    """Start :func:`peak_memory_mb`'s count afresh (CUDA; nothing to do elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device | str) -> float | None:
    """The most memory tensors on ``device`` held since :func:`reset_peak_memory`, in MiB (CUDA's
    ``max_memory_allocated``: what the run needs, without the allocator's cache). ``None`` on the CPU and MPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` while the block runs (None: left as they are), then put back.
    On the CPU the order of a sum depends on the number of threads, so a run fixes it to give the same bits alone
    and beside other runs (:mod:`.side_by_side`)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def set_tf32(precision: str) -> dict:
    """Set PyTorch's TF32 switches for a run computing in ``precision`` (the effective one, "fp32" or "bf16") and
    return them (:func:`tf32_flags`). Called by the engine when a run or an evaluation starts.

    "fp32" is the published computation, so TF32 is off: on an Ampere or newer GPU, cuDNN's convolutions use TF32
    by default (``torch.backends.cudnn.allow_tf32``), which keeps 10 of fp32's 23 mantissa bits. "bf16" (the fast
    mode, whose forward runs under bf16 autocast) gets PyTorch's defaults, as it always had: cuDNN TF32 on, matmuls
    outside autocast in full fp32. The switches exist, and are set, on CPU-only builds too, where they change
    nothing."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    return tf32_flags()


def tf32_flags() -> dict:
    """PyTorch's TF32 switches as they are now: ``tf32_matmul`` (``torch.backends.cuda.matmul.allow_tf32``),
    ``tf32_cudnn`` (``torch.backends.cudnn.allow_tf32``) and ``float32_matmul_precision``."""
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def environment(device: torch.device | str) -> dict:
    """What a run executes on, for its folder's ``environment.jsonl`` and the report's setup section: the CPU model
    and its cores, the device, the GPU's name and memory in MiB (if any), the Python, torch and CUDA versions, the
    world size, the TF32 switches (:func:`tf32_flags`) and the project's git commit (``None`` outside a git
    checkout)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "gpu_memory_mb": torch.cuda.get_device_properties(device).total_memory // 2**20 if cuda else None,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "world_size": rank_world()[1], **tf32_flags(), "commit": _git_commit()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+changes" if dirty else "")
