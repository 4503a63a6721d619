"""Where the time of a DETR training step goes: fp32 against the fast mode (bf16 autocast + channels_last).

For each implementation (this project's model, the published facebookresearch/detr one with ``--published-src``,
and Hugging Face's ``DetrForObjectDetection`` with ``--impls hf``), variant (decoder layers / queries: 6/100, 3/100, 3/50), image size (256, 512, 800x1066),
mode (``fp32``, ``fast``) and phase (``train``, ``eval``) it times a few steps after warm-up and reports the median
step, its breakdown (data loading, forward, matching, loss, backward, optimizer), images/s, and peak memory
(process RSS; CUDA max allocated). Each configuration runs in its own process, so its peak RSS is its own.

The training step is the engine's (:func:`detr_nb_utils.training.engine.train_one_epoch`) cut into timed phases: forward
(``models.fast.model_forward``: autocast to bf16 in fast mode, fp32 outputs), ``SetCriterion`` (matching timed
apart), ``Σ weight·term``, the non-finite check, backward, clipping to 0.1, AdamW (lr 1e-4, backbone 1e-5, weight
decay 1e-4; the engine's ``build_optimizer``). Eval is the forward alone under ``torch.no_grad`` (as
``evaluate.evaluate``). On CUDA each phase ends with ``torch.cuda.synchronize()`` and a second, un-instrumented set
of steps is timed with CUDA events for the headline number.

Images are the real COCO val2017 sample (``--coco``) through the project's dataset (decode, resize to exactly the
size asked, normalise) and ``collate_fn``; ``--data random`` uses random tensors and boxes. Weights are the demo's
random-weight checkpoint (BatchNorm calibrated so activations keep their scale), the same for both implementations.

Results: a JSON file in ``benchmarks/`` (git-ignored) and one row per configuration appended to the
"## Training step" table of ``benchmarks/RESULTS.md``. Examples::

    python benchmarks/bench_step.py --variants 6/100 --sizes 512 --published-src /tmp/detr_ref
    python benchmarks/bench_step.py --sizes 256,512,800x1066 --modes fp32,fast --phases train,eval
    python benchmarks/bench_step.py --bf16-diff --sizes 512      # what bf16 changes on fixed weights
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the random-weight stand-in for the official checkpoint is a test fixture

from random_checkpoint import make_random_checkpoint  # noqa: E402
from detr_nb_utils.models.checkpoint import load_pretrained  # noqa: E402
from detr_nb_utils.models.detr import build_detr  # noqa: E402
from detr_nb_utils.models.fast import cached_folded_weights, model_forward, set_fast_mode, to_float, tune_cpu_allocator  # noqa: E402
from detr_nb_utils.models.loss import SetCriterion, weighted_total  # noqa: E402

PHASES = ("data", "forward", "matching", "loss", "backward", "optimizer")
COCO_SAMPLE = ROOT.parent / "shared" / "coco_val2017_sample"
RESULTS = HERE / "RESULTS.md"
SECTION = "## Training step"
TABLE_HEAD = ("| date | machine | torch | impl | variant | size | mode | phase | batch | step s | data | forward | "
              "matching | loss | backward | optimizer | img/s | loader img/s | peak RSS MiB | CUDA peak MiB | "
              "others' cores | notes |")
RESULT_MARK = "BENCH_RESULT "


# ----------------------------------------------------------------------------------------------- the machine
def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch/torchvision versions, bf16 support, GPU name; what a RESULTS.md row names."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torchvision
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0], "threads": torch.get_num_threads(),
            "amx": bool(torch.cpu._is_amx_tile_supported()), "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_label(info: dict) -> str:
    if "gpu" in info:
        return f"{info['gpu']} (host {info['cpu']}, {info['cores']} cores)"
    isa = "AMX" if info["amx"] else "AVX512-BF16" if info["avx512_bf16"] else "no native bf16"
    return f"{info['cpu']}, {info['cores']} cores, {isa}"


def others_busy() -> tuple[float, float]:
    """(wall clock, CPU seconds spent by processes other than this one and its finished children)."""
    t = psutil.cpu_times()
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    mine = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return time.monotonic(), busy - mine


def wait_quiet(threshold: float, timeout: float, probe: float = 3.0) -> float:
    """Wait (up to ``timeout`` s) until other processes use fewer than ``threshold`` cores; returns their use."""
    deadline = time.monotonic() + timeout
    while True:
        w0, b0 = others_busy()
        time.sleep(probe)
        w1, b1 = others_busy()
        cores = (b1 - b0) / (w1 - w0)
        if cores < threshold or time.monotonic() > deadline:
            return cores
        print(f"  waiting: other processes use {cores:.2f} cores (load {os.getloadavg()[0]:.2f})", flush=True)
        time.sleep(10)


# ------------------------------------------------------------------------------------------------- the data
def parse_size(s: str) -> tuple[int, int]:
    h, _, w = s.lower().partition("x")
    return int(h), int(w or h)


def parse_variant(s: str) -> tuple[int, int]:
    layers, _, queries = s.partition("/")
    return int(layers), int(queries)


def real_loader(coco: Path, size: tuple[int, int], batch: int, workers: int, pin: bool):
    """The COCO sample through the project's dataset and ``collate_fn``, every image resized to exactly ``size``."""
    from torchvision.transforms import v2

    from detr_nb_utils.data.coco import CocoDetection, collate_fn
    from detr_nb_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    transforms = v2.Compose([v2.Resize(list(size)), v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = CocoDetection(coco / "annotations" / "instances_val2017_sample.json", coco / "images", transforms)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, drop_last=True, collate_fn=collate_fn,
                                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


def random_batches(size: tuple[int, int], batch: int, n: int = 8, seed: int = 0) -> list:
    """``n`` batches of random images (normal noise) with 1-20 random boxes per image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        targets = []
        for _ in range(batch):
            k = int(torch.randint(1, 21, (), generator=g))
            cxcy = torch.rand(k, 2, generator=g) * 0.8 + 0.1
            wh = torch.rand(k, 2, generator=g) * 0.25 + 0.05
            targets.append({"labels": torch.randint(1, 91, (k,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
        out.append((torch.randn(batch, 3, *size, generator=g), torch.zeros(batch, *size, dtype=torch.bool), targets))
    return out


def batch_source(cfg: SimpleNamespace, device: torch.device):
    """(an endless iterator of batches, the loader or None, "real"/"random")."""
    if cfg.data == "real":
        loader = real_loader(Path(cfg.coco), cfg.size, cfg.batch, cfg.workers, device.type == "cuda")
        return (b for _ in itertools.count() for b in loader), loader, "real"
    batches = random_batches(cfg.size, cfg.batch)
    return itertools.cycle(batches), None, "random"


def to_device(batch, device: torch.device):
    images, mask, targets = batch
    nb = device.type == "cuda"
    return (images.to(device, non_blocking=nb), mask.to(device, non_blocking=nb),
            [{k: t[k].to(device, non_blocking=nb) for k in ("labels", "boxes")} for t in targets])


# ------------------------------------------------------------------------------------------------ the model
def build_impl(cfg: SimpleNamespace, device: torch.device):
    """``(model, criterion, call)`` for ``cfg.impl``; ``call(images, mask, amp_dtype, channels_last)`` -> fp32 outputs.

    Every implementation gets the weights of ``cfg.checkpoint`` (sliced to the variant by ``load_pretrained``).
    """
    layers, queries = cfg.variant
    ours = build_detr(num_queries=queries, dec_layers=layers)
    load_pretrained(ours, cfg.checkpoint)
    if cfg.impl == "ours":
        model, criterion = ours, SetCriterion(dec_layers=layers)
        call = lambda images, mask, amp, cl: model_forward(model, images, mask, amp, cl)  # noqa: E731
    elif cfg.impl == "hf":
        model, criterion, call = build_hf(ours)
        del ours
    else:
        from bench_published import build_published
        model, criterion, published_call = build_published(cfg.published_src, queries, layers)
        model.load_state_dict(ours.state_dict(), strict=True)
        del ours

        def call(images, mask, amp, cl):
            if cl:
                images = images.contiguous(memory_format=torch.channels_last)
            if amp is None:
                return published_call(images, mask)
            with torch.autocast(images.device.type, dtype=amp):
                return to_float(published_call(images, mask))
    model.to(device)
    if cfg.mode == "fast":
        model.to(memory_format=torch.channels_last)
        if cfg.impl == "ours":
            set_fast_mode(model, True)
    return model, criterion.to(device), call


def build_hf(ours: nn.Module):
    """``(model, criterion, call)`` for Hugging Face's ``DetrForObjectDetection`` holding ``ours``'s weights: the
    project's export (``detr_nb_utils.export``) loaded back with ``from_pretrained``, as a user of transformers would
    load it. Its ResNet stem and ``layer1`` are frozen as in the published model (transformers leaves every backbone
    parameter trainable). The export's config has ``auxiliary_loss`` off (transformers' auxiliary path computes
    another function), so the criterion is the final layer's set loss, which equals transformers' own loss (tests);
    the matching and loss of the other layers are not in its step (about 1 ms each here). ``call`` runs the model
    with its pixel mask and, given an ``amp`` dtype, under autocast with fp32 outputs."""
    from transformers import DetrForObjectDetection

    from detr_nb_utils.data.label_map import LabelMap
    from detr_nb_utils.export import export_hf, freeze_as_published
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(ours, LabelMap.coco(), Path(tmp) / "hf", min_size=800, max_size=1333, check=False)
        model = DetrForObjectDetection.from_pretrained(folder)
    freeze_as_published(model)
    criterion = SetCriterion(dec_layers=ours.dec_layers, aux_loss=False)

    def call(images, mask, amp, cl):
        if cl:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(pixel_values=images, pixel_mask=(~mask).long())
        return to_float({"pred_logits": out.logits, "pred_boxes": out.pred_boxes})

    return model, criterion, call


def build_optimizer(model: nn.Module, kind: str, mode: str) -> torch.optim.Optimizer:
    """The engine's AdamW (two groups: lr 1e-4, backbone 1e-5; weight decay 1e-4); ``kind`` "engine" keeps its
    choice of kernels for ``mode`` (fused on CUDA, and on the CPU in the fast mode), "foreach"/"fused"/"loop"
    force one."""
    hp = SimpleNamespace(lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, precision="bf16" if mode == "fast" else "fp32")
    if kind == "engine":
        try:
            from detr_nb_utils.training.engine import build_optimizer as engine_build
            return engine_build(model, hp)
        except ImportError:
            kind = "fused" if next(model.parameters()).is_cuda else "loop"
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "backbone" not in n], "lr": hp.lr},
              {"params": [p for n, p in named if "backbone" in n], "lr": hp.lr_backbone}]
    flags = {"foreach": {"foreach": True}, "fused": {"fused": True}, "loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay, **flags)


# ------------------------------------------------------------------------------------------------- timing
class Clock:
    """Phase timer: host clock, with ``torch.cuda.synchronize`` before each reading on CUDA when ``sync``."""

    def __init__(self, device: torch.device, sync: bool = True) -> None:
        self.sync = sync and device.type == "cuda"
        self.times: dict[str, float] = {}
        self.t = self.now()

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        t = self.now()
        self.times[phase] = self.times.get(phase, 0.0) + t - self.t
        self.t = t


def time_matching(criterion: nn.Module, clock: Clock, sink: dict) -> None:
    """Wrap ``criterion.matcher.forward`` so that the seconds spent matching accumulate in ``sink["matching"]``
    (read with ``clock``, so synchronised on CUDA only while the clock is)."""
    forward = criterion.matcher.forward

    def timed(*args, **kwargs):
        t = clock.now()
        out = forward(*args, **kwargs)
        sink["matching"] = sink.get("matching", 0.0) + clock.now() - t
        return out
    criterion.matcher.forward = timed


def train_step(model, criterion, call, optimizer, batches, device, amp, channels_last, clock: Clock,
               match: dict) -> dict:
    """One engine training step, phase by phase; returns seconds per phase. ``match``: the sink that
    :func:`time_matching` fills."""
    match.clear()
    clock.times, clock.t = {}, clock.now()
    images, mask, targets = to_device(next(batches), device)
    clock.lap("data")
    outputs = call(images, mask, amp, channels_last)
    clock.lap("forward")
    loss_dict = criterion(outputs, targets)
    loss = weighted_total(loss_dict, criterion.weight_dict)
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    clock.lap("loss")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.lap("backward")
    nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    clock.lap("optimizer")
    times = dict(clock.times)
    times["matching"] = match.get("matching", 0.0)
    times["loss"] -= times["matching"]
    return times


def eval_step(model, call, batches, device, amp, channels_last, clock: Clock) -> dict:
    clock.times, clock.t = {}, clock.now()
    images, mask, _ = to_device(next(batches), device)
    clock.lap("data")
    with torch.no_grad():
        call(images, mask, amp, channels_last)
    clock.lap("forward")
    return dict(clock.times)


def events_step_time(step_fn, clock: Clock, n: int) -> list[float]:
    """CUDA only: ``n`` steps without phase synchronisation, each timed with CUDA events (seconds)."""
    out = []
    clock.sync = False
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step_fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1000)
    return out


def loader_rate(loader, batch: int, n: int) -> float | None:
    """Images/s the loader alone delivers (``n`` batches after the first), or None without a loader."""
    if loader is None or n <= 0:
        return None
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    k = 0
    for k, _ in zip(range(n), it):
        pass
    return (k + 1) * batch / (time.perf_counter() - t)


def run_config(cfg: SimpleNamespace) -> dict:
    """Time one configuration in this process; returns medians, per-step times and memory."""
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    allocator = "tuned" if cfg.malloc == "tuned" and tune_cpu_allocator() else "default"
    torch.manual_seed(0)
    amp = torch.bfloat16 if cfg.mode == "fast" else None
    channels_last = cfg.mode == "fast"
    model, criterion, call = build_impl(cfg, device)
    batches, loader, data_kind = batch_source(cfg, device)
    rss_model = psutil.Process().memory_info().rss
    clock = Clock(device)
    if cfg.phase == "train":
        model.train()
        optimizer = build_optimizer(model, cfg.adamw if cfg.mode == "fast" or cfg.adamw_fp32 else "engine", cfg.mode)
        match: dict = {}
        time_matching(criterion, clock, match)
        step = lambda: train_step(model, criterion, call, optimizer, batches, device, amp,  # noqa: E731
                                  channels_last, clock, match)
    else:
        model.eval()
        optimizer = None
        step = lambda: eval_step(model, call, batches, device, amp, channels_last, clock)  # noqa: E731
    # eval, ours: the folded conv weights made once for the pass, as evaluate.evaluate does
    session = cached_folded_weights(model) if cfg.phase == "eval" and cfg.impl == "ours" else contextlib.nullcontext()
    with session:
        for _ in range(cfg.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps = [step() for _ in range(cfg.steps)]
        events = events_step_time(step, clock, cfg.steps) if device.type == "cuda" else None
    totals = [sum(s.values()) for s in steps]
    result = {"step_s": statistics.median(totals), "steps_s": totals,
              "phases_s": {p: statistics.median(s.get(p, 0.0) for s in steps) for p in PHASES if p in steps[0]},
              "data": data_kind, "rss_model_mib": rss_model / 2**20, "malloc": allocator,
              "threads": torch.get_num_threads(),
              "optimizer": type(optimizer).__name__ + str({k: optimizer.defaults.get(k) for k in ("foreach", "fused")})
              if optimizer else None}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["step_s_events"] = statistics.median(events)
        result["step_s_instrumented"] = result["step_s"]
        result["step_s"] = result["step_s_events"]
    result["images_per_s"] = cfg.batch / result["step_s"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["loader_images_per_s"] = loader_rate(loader, cfg.batch, cfg.loader_batches)
    return result


# ------------------------------------------------------------------------------------------- bf16 vs fp32
@torch.no_grad()
def bf16_diff(cfg: SimpleNamespace) -> dict:
    """Fixed weights, the same real batch, eval mode: fp32 outputs against fast mode (bf16 autocast +
    channels_last). Max |Δ| and relative L2 of logits and boxes over every decoder layer, top-1 agreement."""
    device = torch.device(cfg.device)
    cfg.impl, cfg.mode = "ours", "fp32"
    model, _, call = build_impl(cfg, device)
    model.eval()
    batches, _, data_kind = batch_source(cfg, device)
    stats = {"data": data_kind, "checkpoint": str(cfg.checkpoint), "batches": cfg.steps}
    worst = {}
    for _ in range(cfg.steps):
        images, mask, _ = to_device(next(batches), device)
        ref = call(images, mask, None, False)
        model.to(memory_format=torch.channels_last)
        fast = call(images, mask, torch.bfloat16, True)
        model.to(memory_format=torch.contiguous_format)
        layers = [(ref, fast)] + list(zip(ref["aux_outputs"], fast["aux_outputs"]))
        for key in ("pred_logits", "pred_boxes"):
            a = torch.stack([r[key] for r, _ in layers])
            b = torch.stack([f[key] for _, f in layers])
            d = {"max_abs": (a - b).abs().max().item(), "rel_l2": ((a - b).norm() / a.norm()).item(),
                 "ref_max_abs": a.abs().max().item()}
            for k, v in d.items():
                worst[f"{key}_{k}"] = max(worst.get(f"{key}_{k}", 0.0), v)
        agree = (ref["pred_logits"].argmax(-1) == fast["pred_logits"].argmax(-1)).float().mean().item()
        worst["top1_agreement_min"] = min(worst.get("top1_agreement_min", 1.0), agree)
    return {**stats, **worst}


# --------------------------------------------------------------------------------------------- the driver
def child_main(spec: str) -> None:
    cfg = SimpleNamespace(**json.loads(spec))
    cfg.size, cfg.variant = tuple(cfg.size), tuple(cfg.variant)
    out = bf16_diff(cfg) if cfg.what == "bf16_diff" else run_config(cfg)
    out["machine"] = machine_info(torch.device(cfg.device))
    print(RESULT_MARK + json.dumps(out), flush=True)


def run_in_child(spec: dict, timeout: float) -> dict:
    """One configuration in a fresh interpreter; also measures how busy the other processes were meanwhile."""
    w0, b0 = others_busy()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout)
    w1, b1 = others_busy()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"configuration {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len(RESULT_MARK):])
    out["others_cores"] = (b1 - b0) / (w1 - w0)
    return out


def fmt(x, nd=3):
    return "" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def settings_note(r: dict) -> str:
    """What the row's numbers depend on besides the columns: data, threads, allocator, AdamW kernels, notes."""
    s = r["spec"]
    parts = [f"{r['data']} data", f"{r['threads']} threads", f"malloc {r['malloc']}", f"{s['steps']} steps"]
    if s["phase"] == "train" and r.get("optimizer"):
        kind = "fused" if "'fused': True" in r["optimizer"] else "foreach" if "'foreach': True" in r["optimizer"] \
            else "default"
        parts.append(f"AdamW {kind}")
    return ", ".join(parts + ([r["notes"]] if r.get("notes") else []))


def result_row(r: dict) -> str:
    s, m, ph = r["spec"], r["machine"], r["phases_s"]
    cols = [m["date"], machine_label(m), m["torch"], s["impl"], "{}/{}".format(*s["variant"]),
            "{}x{}".format(*s["size"]), s["mode"], s["phase"], s["batch"], fmt(r["step_s"])]
    cols += [fmt(ph.get(p)) for p in PHASES]
    cols += [fmt(r["images_per_s"], 2), fmt(r.get("loader_images_per_s"), 1), fmt(r["peak_rss_mib"], 0),
             fmt(r.get("cuda_peak_mib"), 0), fmt(r["others_cores"], 2), settings_note(r)]
    return "| " + " | ".join(str(c) for c in cols) + " |"


def append_results(rows: list[str], path: Path = RESULTS) -> None:
    """Append ``rows`` to the table under "## Training step", creating the section at the end if missing; the
    rest of the file (other benchmarks' sections) is left as it is."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    if SECTION not in lines:
        lines += ["", SECTION, "", "Rows appended by `benchmarks/bench_step.py`; step s is the median step (seconds), "
                  "the phase columns are medians of each phase, so they need not add up to it exactly. "
                  "\"others' cores\": CPU used by other processes while the configuration ran.", "",
                  TABLE_HEAD, "|" + "---|" * (TABLE_HEAD.count("|") - 1)]
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    last_row = max((i for i in range(start, end) if lines[i].startswith("|")), default=end - 1)
    lines[last_row + 1:last_row + 1] = rows
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("::")[-1])
    p.add_argument("--impls", default="ours",
                   help="ours,published,hf (published needs --published-src; hf: Hugging Face's DetrForObjectDetection "
                        "with the same weights, needs the export extra)")
    p.add_argument("--published-src", default=None, help="folder of a facebookresearch/detr checkout (not committed)")
    p.add_argument("--variants", default="6/100", help="decoder layers/queries, comma separated: 6/100,3/100,3/50")
    p.add_argument("--sizes", default="512", help="HxW or a square side, comma separated: 256,512,800x1066")
    p.add_argument("--modes", default="fp32,fast", help="fp32,fast")
    p.add_argument("--phases", default="train,eval", help="train,eval")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: 0 on CPU, 6 on CUDA)")
    p.add_argument("--data", choices=("real", "random"), default="real")
    p.add_argument("--coco", default=str(COCO_SAMPLE), help="folder with images/ and annotations/ (COCO sample)")
    p.add_argument("--checkpoint", default=None, help="weights (default: the demo's random-weight checkpoint)")
    p.add_argument("--adamw", choices=("engine", "loop", "foreach", "fused"), default="engine",
                   help="AdamW kernels in fast mode ('engine': whatever engine.build_optimizer picks)")
    p.add_argument("--adamw-fp32", action="store_true", help="apply --adamw to fp32 mode too")
    p.add_argument("--malloc", choices=("default", "tuned"), default="tuned",
                   help="'tuned' (what the engine does on the CPU, for both implementations): "
                        "fast.tune_cpu_allocator() first (glibc keeps freed memory; no page faults)")
    p.add_argument("--loader-batches", type=int, default=4, help="batches to time the loader alone (0: skip)")
    p.add_argument("--bf16-diff", action="store_true", help="only compare fp32 and fast outputs on fixed weights")
    p.add_argument("--quiet-cores", type=float, default=0.5, help="wait until other processes use fewer cores")
    p.add_argument("--quiet-timeout", type=float, default=0.0, help="seconds to wait for that (0: don't wait)")
    p.add_argument("--notes", default="", help="text for the notes column")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.child is not None:
        return child_main(a.child)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: CUDA is not available here; use --device cpu or auto")
    impls = a.impls.split(",")
    if "published" in impls:
        from bench_published import PublishedUnavailable, build_published
        try:
            if a.published_src is None:
                raise PublishedUnavailable("no --published-src given")
            build_published(a.published_src, 10, 1)
        except PublishedUnavailable as e:
            print(f"skipping the published implementation: {e}")
            impls = [i for i in impls if i != "published"]
    if a.data == "real" and not (Path(a.coco) / "annotations" / "instances_val2017_sample.json").is_file():
        print(f"no COCO sample in {a.coco}: using --data random")
        a.data = "random"
    checkpoint = a.checkpoint or str(make_random_checkpoint(Path(tempfile.gettempdir()) / "detr_bench_random.pth"))
    base = {"device": str(device), "batch": a.batch, "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
            "workers": a.workers if a.workers >= 0 else (6 if device.type == "cuda" else 0), "data": a.data,
            "coco": a.coco, "checkpoint": checkpoint, "adamw": a.adamw, "adamw_fp32": a.adamw_fp32,
            "published_src": a.published_src, "loader_batches": a.loader_batches, "malloc": a.malloc}
    sizes, variants = [parse_size(s) for s in a.sizes.split(",")], [parse_variant(v) for v in a.variants.split(",")]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if a.bf16_diff:
        diffs = []
        for size, variant in itertools.product(sizes, variants):
            spec = {**base, "what": "bf16_diff", "size": size, "variant": variant, "impl": "ours", "mode": "fp32"}
            diffs.append({"size": size, "variant": variant, **run_in_child(spec, a.timeout)})
            d = diffs[-1]
            print(f"{variant[0]}/{variant[1]} {size[0]}x{size[1]}: max |d logits| {d['pred_logits_max_abs']:.4f} "
                  f"(rel L2 {d['pred_logits_rel_l2']:.4f}), max |d boxes| {d['pred_boxes_max_abs']:.5f} "
                  f"(rel L2 {d['pred_boxes_rel_l2']:.5f}), top-1 agreement >= {d['top1_agreement_min']:.3f}")
        (HERE / f"bf16_diff-{stamp}.json").write_text(json.dumps(diffs, indent=1))
        return
    results, rows = [], []
    for impl, variant, size, phase, mode in itertools.product(impls, variants, sizes, a.phases.split(","),
                                                              a.modes.split(",")):
        spec = {**base, "what": "step", "impl": impl, "variant": variant, "size": size, "phase": phase, "mode": mode}
        if a.quiet_timeout > 0:
            wait_quiet(a.quiet_cores, a.quiet_timeout)
        r = run_in_child(spec, a.timeout)
        r.update(spec=spec, notes=a.notes, load_1min=os.getloadavg()[0])
        results.append(r)
        rows.append(result_row(r))
        ph = " ".join(f"{p} {v:.3f}" for p, v in r["phases_s"].items())
        print(f"{impl:9s} {variant[0]}/{variant[1]:<3d} {size[0]}x{size[1]:<5d} {phase:5s} {mode:4s} "
              f"step {r['step_s']:.3f} s ({ph}) {r['images_per_s']:.2f} img/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"others {r['others_cores']:.2f} cores", flush=True)
    out = HERE / f"bench_step-{stamp}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    if not a.no_results and rows:
        append_results(rows)
        print(f"appended {len(rows)} rows to {RESULTS}")


if __name__ == "__main__":
    main()
