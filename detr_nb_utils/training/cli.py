"""Command line: the engine of notebooks 03-05 without a notebook, on one device or under torchrun.

    python -m detr_nb_utils.training --config run.json --set epochs=10 --set run_name=long
    torchrun --nproc_per_node=4 -m detr_nb_utils.training --config run.json

``--config`` reads a ``config.json`` (written with ``RunConfig.to_json``, or a run folder's own, which resumes or
extends that run where the folder is now, moved or not); without it the profile's defaults (``--profile``, else
``DETR_NB_PROFILE``, else study). Under torchrun every process trains on its shard of each batch with
DistributedDataParallel (NCCL on CUDA, one GPU per process; gloo on CPU): the global batch is
``nproc x batch_size``, the number of boxes that normalises the box losses is averaged over the processes as
published, evaluation is sharded and gathered, and only rank 0 writes the run folder.

Exit status: 0 when the run finished; 2, after one line ``error: …``, for the errors a user can act on (a bad
config value or field, a broken config file, missing data, a damaged checkpoint, a refused resume, a run folder in
use, a full disk, a run that diverged); a traceback means a bug.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist

from ..models.checkpoint import CheckpointError
from . import runs
from .config import RunConfig, make_config
from .engine import run_experiment
from .non_finite import NonFiniteError
from .run_lock import RunFolderLocked

#: the errors a user can meet and act on, each with a message naming the file or field: printed as one line
#: ``error: …`` with exit status 2 (ValueError: configs, data, refused resumes; OSError: missing files, full disks)
EXPECTED_ERRORS = (ValueError, OSError, CheckpointError, runs.DamagedRunFolder, RunFolderLocked, NonFiniteError)


def parse_value(cfg_field: str, text: str, type_name: str):
    """``text`` as the type of the config field (``none`` for optional fields, ``a,b,c`` for tuples)."""
    if "None" in type_name and text.lower() in ("none", "null"):
        return None
    try:
        if type_name.startswith("tuple"):
            return tuple(int(v) for v in text.split(",") if v.strip())
        if type_name.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if type_name.startswith("int"):
            return int(text)
        if type_name.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"--set {cfg_field}={text}: not a valid {type_name}") from None
    return text


def config_from_args(argv: list[str] | None = None) -> RunConfig:
    parser = argparse.ArgumentParser(prog="python -m detr_nb_utils.training", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a config.json to start from")
    parser.add_argument("--profile", choices=["study", "demo"], help="defaults to use without --config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field")
    args = parser.parse_args(argv)
    base = _read_config(args.config) if args.config else make_config(args.profile).to_dict()
    types = {f.name: f.type for f in fields(RunConfig)}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        base[key] = parse_value(key, value, types[key])
    return RunConfig.from_dict(base)


def _read_config(path: str) -> dict:
    """The fields of the config file ``path``. A run folder's own ``config.json`` (beside its metrics or last
    checkpoint) names that folder as the run's, where it is now (:func:`.runs.located`): a moved folder resumes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    cfg = RunConfig.from_json(path)
    folder = path.parent
    if path.name == runs.CONFIG and any((folder / name).is_file() for name in (runs.METRICS, runs.LAST)):
        cfg = runs.located(cfg, folder)
    return cfg.to_dict()


def init_distributed(cfg: RunConfig) -> RunConfig:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; on CUDA pin this process to its GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return RunConfig.from_dict({**cfg.to_dict(), "device": "cpu"})
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    return RunConfig.from_dict({**cfg.to_dict(), "device": f"cuda:{local_rank}"})


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 finished, 2 an expected error, printed as ``error: …``)."""
    try:
        cfg = config_from_args(argv)
    except SystemExit as e:  # argparse has printed the problem (or the help)
        return e.code
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        cfg = init_distributed(cfg)
        try:
            record = run_experiment(cfg)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        best = record.best_epoch_ap
        ap = f"{100 * record.metrics.loc[best, 'val_AP']:.2f} points at epoch {best}" if best is not None else "n/a"
        print(f"{record.run_dir}: {int(record.metrics.index[-1])} epochs finished; best val AP {ap}; "
              f"best total val loss at epoch {record.best_epoch_loss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
