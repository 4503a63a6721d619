"""Fine-tuning DETR: the original study's recipe (AdamW, two learning rates, clipping), evaluated with COCO AP
every epoch.

:func:`run_experiment` does a whole run from a :class:`~.config.RunConfig`: data (:mod:`.data_setup`: the split,
made when missing with the demo's synthetic pool, or your own dataset), the model with the checkpoint loaded (sliced
to the variant, its class head rebuilt for your classes), an epoch-0 evaluation of the loaded weights, then train /
evaluate / save per epoch into the run folder (:mod:`.runs`), resuming a run folder where it stopped.
:func:`evaluate_checkpoint` is the epoch-0 evaluation on its own. Used by notebooks 02-05 and 07 and by
``python -m detr_nb_utils.training`` (also under torchrun).
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import atomic
from ..data.categories import COCO_NAMES
from ..data.coco import CocoDetection
from ..data.label_map import LabelMap
from ..models.checkpoint import LoadReport, load_pretrained
from ..models.class_head import class_rows, class_sources
from ..models.detr import build_detr
from ..models.fast import model_forward, resolve_amp_dtype, resolve_channels_last, set_fast_mode, tune_cpu_allocator
from ..models.loss import SetCriterion, weighted_total
from . import runs
from .config import RunConfig
from .data_setup import build_loader, prepare_data
from .evaluation import evaluate
from .non_finite import (TRAINING_ADVICE, NonFiniteError, NonFiniteLossError, NonFiniteOutputError,
                         finite_flags, raise_if_outputs_non_finite)
from .run_lock import RunLock
from .epoch_zero import epoch0_key, shared_epoch0
from .runtime import barrier, environment, rank_world, resolve_device, seed_everything, set_tf32, torch_threads
from .tensorboard import TensorBoardLog


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: names containing "backbone" at ``lr_backbone``, the rest at ``lr``
    (the published parameter groups, in its order). Fused kernels on CUDA, and on the CPU in the fast mode
    (bf16): same update rule, one kernel per step (benchmarks/RESULTS.md); fp32 on the CPU the multi-tensor
    ("foreach") implementation of the same rule."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "backbone" not in n], "lr": cfg.lr},
              {"params": [p for n, p in named if "backbone" in n], "lr": cfg.lr_backbone}]
    device = named[0][1].device if named else torch.device("cpu")
    fused = device.type == "cuda" or (device.type == "cpu" and resolve_amp_dtype(cfg.precision, device) is not None)
    # fp32 on the CPU: one kernel per step over all the tensors, not a loop over them (a seventh of the demo's step)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None,
                             foreach=None if fused else True)


def effective_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` ("fp32", "bf16" or "auto") computes in on ``device``: "bf16" (autocast) or "fp32". A run
    records it in every metrics row (:data:`.runs.PRECISION_FIELD`) and resumes only in the same."""
    return "fp32" if resolve_amp_dtype(precision, torch.device(device)) is None else "bf16"


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Both learning rates per optimizer step: the warm-up arm's linear ramp over ``cfg.warmup_steps`` steps (step
    ``k`` at ``(k + 1) / warmup_steps`` of the rate), then the published StepLR's x0.1 every ``lr_drop`` epochs of
    ``steps_per_epoch`` steps (never when ``lr_drop`` is None: constant, the original study's). The scheduler
    steps after every optimizer step (a hook on the optimizer), and its step count is saved with the run's last
    checkpoint, so a resumed run continues the schedule where it stopped."""
    warmup, drop_every = cfg.warmup_steps, (cfg.lr_drop or 0) * steps_per_epoch

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * 0.1 ** (step // drop_every) if drop_every else ramp

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    optimizer.register_step_post_hook(lambda *_: scheduler.step())
    return scheduler


def _step_values(loss_dict: dict, loss: torch.Tensor) -> torch.Tensor:
    """``[loss, *terms]`` detached, averaged over processes when distributed (as the published logging)."""
    values = torch.stack([loss.detach(), *(v.detach().float() for v in loss_dict.values())])
    if rank_world()[1] > 1:
        dist.all_reduce(values)
        values /= rank_world()[1]
    return values


def _step_name(epoch: int, step: int, targets: list[dict]) -> str:
    return f"epoch {epoch}, step {step} (image ids {[int(t['image_id']) for t in targets]})"


def train_one_epoch(model: nn.Module, criterion: SetCriterion, loader, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, epoch: int, cfg: RunConfig,
                    on_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``: forward (bf16 autocast when ``cfg.precision`` resolves to it), matching and
    loss in fp32, ``Σ weight·term`` backward, gradient clipping to ``cfg.clip_max_norm``, AdamW step.

    Returns the mean over steps of ``loss`` and of every unweighted term, plus ``lr``, ``lr_backbone``,
    ``steps``. Raises, before the optimizer step, :class:`~.non_finite.NonFiniteOutputError` naming the model's
    outputs (any decoder layer's ``pred_logits``, ``pred_boxes``) that are NaN or infinite, instead of letting the
    matcher fail on them, and :class:`~.non_finite.NonFiniteLossError` when the loss is not finite. Both checks are
    read in the step's one synchronisation with the device (as the loss's check alone was before).
    ``on_step(step, loss)``: called after each step with its weighted loss (e.g. TensorBoard's per-step curve).
    """
    device = torch.device(device)
    amp_dtype = resolve_amp_dtype(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, amp_dtype)
    model.train()
    criterion.train()
    sums, keys, steps = None, None, 0
    show = cfg.progress and rank_world()[0] == 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False, dynamic_ncols=True)
    for images, mask, batch in bar:
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        targets = [{k: t[k].to(device, non_blocking=True) for k in ("labels", "boxes")} for t in batch]
        outputs = model_forward(model, images, mask, amp_dtype, channels_last)
        finite = finite_flags(outputs)  # on the device; read with the loss's check below
        try:
            loss_dict = criterion(outputs, targets)
        except (ValueError, RuntimeError):  # the matcher refuses NaN costs: name the outputs they came from
            raise_if_outputs_non_finite(finite, outputs, _step_name(epoch, steps, batch), TRAINING_ADVICE)
            raise
        loss = weighted_total(loss_dict, criterion.weight_dict)
        values = _step_values(loss_dict, loss)
        if not bool(torch.cat([finite, torch.isfinite(values[:1])]).all()):  # the step's one synchronisation
            raise_if_outputs_non_finite(finite, outputs, _step_name(epoch, steps, batch), TRAINING_ADVICE)
            raise NonFiniteLossError(epoch, steps, {k: float(v) for k, v in zip(loss_dict, values[1:])})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_max_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
        optimizer.step()
        sums, keys, steps = (values if sums is None else sums + values), ["loss", *loss_dict], steps + 1
        if on_step is not None:  # the loss is on the host already: the finiteness check above synchronised
            on_step(steps, float(values[0]))
        if show:
            bar.set_postfix(loss=f"{float(sums[0]) / steps:.3f}")
    if steps == 0:
        raise ValueError(f"no training step in epoch {epoch}: {len(loader.dataset)} training images for batch_size "
                         f"{cfg.batch_size} (the last incomplete batch is dropped); raise n_train/max_train_images")
    out = {k: float(v) / steps for k, v in zip(keys, sums)}
    return {**out, "lr": optimizer.param_groups[0]["lr"], "lr_backbone": optimizer.param_groups[1]["lr"],
            "steps": steps}


def build_model(cfg: RunConfig, device: torch.device,
                labels: LabelMap | None = None) -> tuple[nn.Module, SetCriterion, LoadReport | None]:
    """The variant ``cfg`` asks for with ``cfg.checkpoint`` loaded (None: random init), and its criterion.

    ``labels``: the run's label map (``prepare_data(cfg).labels``; None: COCO's, refused for your own data). A
    dataset's own classes get a class head of K + 1 rows, started as ``cfg.class_head`` says: "match", each class
    from the checkpoint's row of the same (normalised) COCO name (:mod:`~detr_nb_utils.models.class_head`), the
    others fresh, "no object" carried; "reinit", all fresh. The report's ``class_sources`` lists where each row came
    from. ``lr_backbone == 0`` freezes the whole backbone, as the published ``train_backbone = lr_backbone > 0``;
    ``cfg.query_indices`` chooses which of the checkpoint's query embeddings the model keeps. A run in bf16 gets
    the fast mode (:func:`~detr_nb_utils.models.fast.set_fast_mode`).
    """
    if labels is None:
        if cfg.own_data:
            raise ValueError("build_model: a run on your own dataset needs its label map: "
                             "build_model(cfg, device, prepare_data(cfg).labels)")
        labels = LabelMap.coco()
    model = build_detr(**{**cfg.arch, "num_classes": labels.num_classes}, num_queries=cfg.num_queries,
                       dec_layers=cfg.dec_layers, dropout=cfg.dropout)
    if cfg.lr_backbone == 0:
        model.backbone.requires_grad_(False)
    report = None
    if cfg.checkpoint is not None:
        own = labels.label_space == "dataset"
        rows = class_rows(labels.names, COCO_NAMES) if own else list(labels.ids)
        fresh = cfg.class_head == "reinit"
        report = load_pretrained(model, cfg.checkpoint, cfg.query_indices, rows if own else None, fresh)
        sources = class_sources(labels.names, [None] * len(rows) if fresh else rows, COCO_NAMES, fresh)
        report.class_sources = sources.set_axis([*labels.indices, labels.num_classes]).rename_axis("class index")
    model.to(device)
    amp_dtype = resolve_amp_dtype(cfg.precision, device)
    set_fast_mode(model, amp_dtype is not None)
    if resolve_channels_last(cfg.channels_last, amp_dtype):
        model.to(memory_format=torch.channels_last)
    criterion = SetCriterion(num_classes=labels.num_classes, eos_coef=cfg.eos_coef, dec_layers=cfg.dec_layers)
    return model, criterion.to(device), report


def _evaluate(cfg: RunConfig, model: nn.Module, criterion: SetCriterion, loader: DataLoader,
              device: torch.device, epoch: int, layers: bool = False, per_layer_ap: bool = True) -> dict:
    """:func:`.evaluation.evaluate` of epoch ``epoch``, a non-finite output named with the epoch and what to do;
    ``layers``: keep every decoder layer's detections too; ``per_layer_ap``: score every decoder layer."""
    dataset: CocoDetection = loader.dataset
    coco: COCO = dataset.coco
    amp_dtype = resolve_amp_dtype(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, amp_dtype)
    try:
        return evaluate(model, criterion, loader, coco, device, amp_dtype, channels_last, per_layer_ap=per_layer_ap,
                        progress=cfg.progress and rank_world()[0] == 0, keep_detections=True, labels=dataset.labels,
                        keep_layer_detections=layers)
    except NonFiniteOutputError as e:
        if epoch == 0:
            start = f"the checkpoint {cfg.checkpoint}" if cfg.checkpoint else "random weights"
            advice = (f"The model gives them with the weights it starts from ({start}), before any training: the "
                      f"checkpoint is damaged or does not fit these settings.")
        else:
            advice = (f"The weights trained in epoch {epoch} diverged; nothing of epoch {epoch} was saved (the run "
                      f"folder keeps epoch {epoch - 1}). Lower lr or clip_max_norm.")
        raise e.reword(where=f"the evaluation of epoch {epoch}, {e.where}", advice=advice)


def evaluate_checkpoint(cfg: RunConfig) -> dict:
    """Epoch 0 on its own: COCO metrics and losses of ``cfg.checkpoint`` (sliced to the variant, and to
    ``cfg.query_indices``) on the val split, without training or a run folder. ``detections`` holds the final
    layer's detections (for the bootstrap); ``effective_precision`` is what ``cfg.precision`` computed in on this
    device ("fp32" or "bf16"; TF32 off in fp32, :func:`.runtime.set_tf32`)."""
    device = resolve_device(cfg.device)
    set_tf32(effective_precision(cfg.precision, device))
    data = prepare_data(cfg)
    precision = effective_precision(cfg.precision, device)

    def compute() -> dict:
        seed_everything(cfg.seed)
        model, criterion, _ = build_model(cfg, device, data.labels)
        return _evaluate(cfg, model, criterion, build_loader(cfg, data, "val", device), device, 0, True)

    with torch_threads(cfg.threads):
        return {**_epoch0(cfg, device, precision, data.manifest, compute), runs.PRECISION_FIELD: precision}


def _epoch0(cfg: RunConfig, device: torch.device, precision: str, manifest: dict, evaluate_now) -> dict:
    """Epoch 0's metrics from the shared evaluation (:mod:`.epoch_zero`), ``evaluate_now()`` run only when no run
    or process has made it yet, with the random generators put back after it: reading it or computing it leaves a
    run's training the same."""
    def compute() -> dict:
        state = runs.rng_state()
        try:
            return evaluate_now()
        finally:
            runs.set_rng_state(state)
    if rank_world()[1] > 1:  # every process takes part in a sharded evaluation: none may wait on the others' file
        return compute()
    return shared_epoch0(cfg, epoch0_key(cfg, str(device), precision, manifest), compute)


class TrainingRun:
    """One run while it trains: the model, optimizer and loaders, and the run folder that rank 0 writes."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.device = cfg, resolve_device(cfg.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()  # keep freed activations for the next step instead of page-faulting them back
        self.rank, self.world = rank_world()
        self.precision = effective_precision(cfg.precision, self.device)
        set_tf32(self.precision)  # fp32 means fp32: no TF32 convolutions (recorded in environment.jsonl)
        self.data = prepare_data(cfg)
        # before the folder is touched, so that a refused resume or a checkpoint that cannot be loaded changes nothing
        last = self._checked_last()
        seed_everything(cfg.seed + self.rank)
        self.model, self.criterion, report = build_model(cfg, self.device, self.data.labels)
        if self.rank == 0:
            runs.prepare_run_dir(cfg, self.data.manifest)
            self.data.labels.save(cfg.run_dir / runs.CATEGORIES)
            if report is not None:
                atomic.write_text(cfg.run_dir / runs.CLASS_HEAD, report.class_sources.to_csv())
            if last is None or last["epoch"] < cfg.epochs:  # a session that trains (re-reading a finished run does not)
                runs.record_environment(cfg.run_dir, environment(self.device), last["epoch"] if last else None)
        barrier()
        self.optimizer = build_optimizer(self.model, cfg)
        self.loaders = {s: build_loader(cfg, self.data, s, self.device) for s in ("train", "val")}
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.loaders["train"]))
        self.history: list[dict] = []
        self.epoch: int | None = None
        self._resume(last)
        self.tensorboard = TensorBoardLog(cfg.run_dir, self.loaders["val"].dataset, len(self.loaders["train"]),
                                          self.epoch) if self.rank == 0 else None
        index = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=index) if self.world > 1 else self.model

    def _checked_last(self) -> dict | None:
        """``checkpoint_last.pth`` of the run folder (None: nothing to resume), refused when it or
        ``checkpoint_best.pth`` is damaged (:class:`.runs.DamagedRunFolder`) or when this run would compute in another
        precision than its finished epochs (:class:`.runs.PrecisionMismatch`)."""
        state = runs.load_last(self.cfg.run_dir)
        if state is not None:
            runs.check_resume_precision(self.cfg.run_dir, state, self.precision,
                                        f"precision={self.cfg.precision!r} on {self.device}",
                                        training_left=state["epoch"] < self.cfg.epochs)
        return state

    def _resume(self, state: dict | None) -> None:
        """Continue from ``state``, the run folder's last checkpoint, when it has one (RNG states: single process
        only)."""
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history, self.epoch = state["history"], state["epoch"]
        if self.world == 1:
            runs.set_rng_state(state["rng"])

    def run(self) -> runs.RunRecord:
        if self.rank == 0:  # each run's epoch lines under a header naming it (several seeds print in turn)
            start = "from the checkpoint" if self.epoch is None else f"resuming after epoch {self.epoch}"
            tqdm.write(f"== {self.cfg.run_dir.name}: {self.cfg.epochs} epochs, seed {self.cfg.seed}, {start}, "
                       f"{self.precision} on {self.device}")
        try:
            if self.epoch is None:
                self._finish_epoch(0, {}, 0.0)
            for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                self.loaders["train"].sampler.set_epoch(epoch)
                start = time.perf_counter()
                on_step = functools.partial(self.tensorboard.train_step, epoch) if self.tensorboard else None
                train = train_one_epoch(self.ddp, self.criterion, self.loaders["train"], self.optimizer,
                                        self.device, epoch, self.cfg, on_step)
                self._finish_epoch(epoch, train, time.perf_counter() - start)
        except NonFiniteError as e:
            if (self.cfg.run_dir / runs.LAST).is_file():
                e.args = (f"{e.args[0]} Last good checkpoint: {self.cfg.run_dir / runs.LAST}",)
            raise
        if self.tensorboard is not None:  # every finished epoch was flushed; an interrupted one is purged on resume
            self.tensorboard.close()
        barrier()
        return runs.load_run(self.cfg.run_dir)

    def _finish_epoch(self, epoch: int, train: dict, train_time: float) -> None:
        """Evaluate (epoch 0, every ``eval_every`` epochs and the last), then rank 0 saves and logs the epoch."""
        cfg, start = self.cfg, time.perf_counter()
        evaluate_now = epoch == 0 or epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        layers = epoch in (0, cfg.epochs)  # every decoder layer's detections: the start and the end of the run
        val = {}
        if epoch == 0:  # shared by the variant's seeds and recipe arms; the RNG as if it had not been evaluated
            val = _epoch0(cfg, self.device, self.precision, self.data.manifest, lambda: _evaluate(
                cfg, self.model, self.criterion, self.loaders["val"], self.device, 0, True))
        elif evaluate_now:  # every decoder layer's AP at epoch 0 and the final epoch (04, 06), the final one's between
            val = _evaluate(cfg, self.model, self.criterion, self.loaders["val"], self.device, epoch, layers,
                            per_layer_ap=epoch == cfg.epochs)
        self.epoch = epoch
        if self.rank != 0:
            return
        detections = val.pop("detections", None)
        if detections is not None:
            runs.save_detections(cfg.run_dir, epoch, detections)
        if "layer_detections" in val:
            runs.save_layer_detections(cfg.run_dir, epoch, val.pop("layer_detections"))
        lrs = [train.pop(k, g["lr"]) for k, g in zip(("lr", "lr_backbone"), self.optimizer.param_groups)]
        eval_time = time.perf_counter() - start
        self.history.append({"epoch": epoch, "lr": lrs[0], "lr_backbone": lrs[1], "train_time_s": train_time,
                             "eval_time_s": eval_time, "wall_time_s": train_time + eval_time,
                             runs.PRECISION_FIELD: self.precision,
                             **{f"train_{k}": v for k, v in train.items()},
                             **{f"val_{k}": v for k, v in val.items()}})
        run_dir = cfg.run_dir
        if epoch >= 1 and evaluate_now and runs.best_epoch(self.history, "val_AP", "max") == epoch:
            runs.save_best(run_dir, self.model, epoch, val, cfg)
        runs.save_last(run_dir, self.model, self.optimizer, self.scheduler, epoch, self.history, cfg)
        runs.write_logs(run_dir, self.history)
        self.tensorboard.epoch_end(epoch, self.history[-1], detections)
        h = self.history[-1]  # one line per epoch, also in headless logs
        parts = ["the checkpoint, before training" if epoch == 0 else f"train loss {h['train_loss']:.3f}"]
        # epochs between evaluations have neither; AP in points, as every table shows it
        parts += [f"val loss total {h['val_loss_total']:.3f}"] if "val_loss_total" in h else []
        parts += [f"val AP {100 * h['val_AP']:.1f} points"] if "val_AP" in h else []
        tqdm.write(f"epoch {epoch}: {', '.join(parts)} ({h['wall_time_s']:.0f} s)")


def run_experiment(cfg: RunConfig) -> runs.RunRecord:
    """A whole run into ``cfg.run_dir``: epoch 0 (the loaded checkpoint, evaluated), then ``cfg.epochs`` epochs
    of training, each evaluated and saved. A run folder holding finished epochs with the same config is
    resumed from its last one (bit-identical metrics on CPU, single process); one with a different config is
    refused (:class:`.runs.RunConfigMismatch`), as is one whose finished epochs were computed in another precision
    than this run would compute in (:class:`.runs.PrecisionMismatch`: ``"auto"`` resolves per device) and one whose
    ``checkpoint_last.pth`` is damaged (:class:`.runs.DamagedRunFolder`). The run holds the folder's lock from start
    to end (:class:`.run_lock.RunLock`): a second process starting the same folder meanwhile is refused
    (:class:`.run_lock.RunFolderLocked`, naming the holder). Returns the run folder read back."""
    with torch_threads(cfg.threads), RunLock(cfg.run_dir) if rank_world()[0] == 0 else contextlib.nullcontext():
        return TrainingRun(cfg).run()
