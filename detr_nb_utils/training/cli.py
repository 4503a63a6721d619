"""Command line: the engine of notebooks 03-05 without a notebook, on one device or under torchrun.

    python -m detr_nb_utils.training --config run.json --set epochs=10 --set run_name=long
    torchrun --nproc_per_node=4 -m detr_nb_utils.training --config run.json

``--config`` reads a ``config.json`` (from a run folder, or written with ``RunConfig.to_json``); without it the
profile's defaults (``--profile``, else ``DETR_NB_PROFILE``, else study). Under torchrun every process trains on
its shard of each batch with DistributedDataParallel (NCCL on CUDA, one GPU per process; gloo on CPU): the
global batch is ``nproc x batch_size``, the number of boxes that normalises the box losses is averaged over the
processes as published, evaluation is sharded and gathered, and only rank 0 writes the run folder.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

import torch
import torch.distributed as dist

from .config import RunConfig, make_config
from .engine import run_experiment


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
    base = RunConfig.from_json(args.config).to_dict() if args.config else make_config(args.profile).to_dict()
    types = {f.name: f.type for f in fields(RunConfig)}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        base[key] = parse_value(key, value, types[key])
    return RunConfig.from_dict(base)


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


def main(argv: list[str] | None = None) -> None:
    cfg = init_distributed(config_from_args(argv))
    try:
        record = run_experiment(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        best = record.best_epoch_ap
        ap = f"{record.metrics.loc[best, 'val_AP']:.4f} at epoch {best}" if best is not None else "n/a"
        print(f"{record.run_dir}: {int(record.metrics.index[-1])} epochs finished; best val AP {ap}; "
              f"best total val loss at epoch {record.best_epoch_loss}")


if __name__ == "__main__":
    main()
