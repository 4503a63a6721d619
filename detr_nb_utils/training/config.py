"""One frozen configuration for a fine-tuning run, and its two profiles.

``make_config(profile=..., **params)`` turns a notebook's ``parameters`` cell (or the CLI's ``--set``) into a
validated :class:`RunConfig`; ``RunConfig.to_json`` is saved beside every checkpoint and metrics file. The run
folders' names are made here too (:func:`variant_name`, :func:`seeded_run_name`). Used by every notebook (the cell
after ``parameters``) and by the command line (:mod:`detr_nb_utils.training.cli`).

Profiles
--------
``study``: the original study's recipe on the real mini-COCO split (COCO val2017, 4,000 train / 1,000 val images,
full-size images, the official checkpoint), in fp32. ``demo``: the same study in miniature, offline, minutes on a
laptop CPU: a synthetic COCO-format pool of 500 images (made on first use) split 400/100 as COCO's val2017 is, and
the demo world's tiny DETR (``backbone="tiny"``, :data:`~detr_nb_utils.models.detr.TINY_DETR`) pre-trained on
synthetic shapes (:data:`TINY_CHECKPOINT`, committed with its SHA-256, made by
:mod:`detr_nb_utils.training.pretrain`) in the official checkpoint's place. Its numbers are real measurements of a
real (small) detector; they say nothing about DETR-R50 on COCO.

Precision: one numeric regime per study. Both profiles run in ``"fp32"``, the published computation, on every
machine, so runs compare with each other and with the paper whatever hardware each ran on; the fast mode stays one
setting away (``precision="bf16"``), for a study that has first checked in 02_checkpoint_inspection that bf16
does not move the epoch-0 AP beyond the noise of the images. A run folder records the precision it computed in
(``effective_precision``) and refuses to resume in another (:func:`.runs.check_resume_precision`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..data.transforms import MAX_SIZE, TRAIN_SCALES, VAL_SIZE
from .config_checks import CHECKPOINT_SHAPES, CHECKS, fail
from .recipe import ORIGINAL, recipe_values

PROFILE_ENV = "DETR_NB_PROFILE"
#: the demo world's pre-trained tiny DETR, committed with the project (its SHA-256 in ``<stem>.json``)
TINY_CHECKPOINT = "data/pretrained/tiny_detr.pth"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers. Defaults are the ``study`` profile (the original study's settings).

    Paths are relative to the working directory (the project root for notebooks and the CLI). ``image_dir`` and
    ``annotation_file`` ``None``: found under ``data_root`` by :func:`~detr_nb_utils.data.coco.resolve_coco_layout`.
    Your own dataset instead of a split of ``data_root`` (:attr:`own_data`): ``train_annotation_file``,
    ``train_image_dir``, ``val_annotation_file`` and ``val_image_dir``, or ``dataset_dir``, a folder laid out like COCO
    (:func:`~detr_nb_utils.data.coco.resolve_dataset_layout`); its classes get contiguous indices
    (:class:`~detr_nb_utils.data.label_map.LabelMap`) and ``class_head`` (:data:`.config_checks.CLASS_HEADS`) says
    how their rows start. ``checkpoint`` ``None``: random initialisation (tests only). Image sizes are pixels:
    validation resizes the shorter side to ``min_size`` with the longer side at most ``max_size``; training picks the
    shorter side from ``train_scales`` and, with ``random_crop`` (the published augmentation), half the time first
    crops a random region.
    ``eval_batch_size`` matters for AP because images of a batch are padded to the largest one; the published numbers
    use 2. ``precision``: ``"fp32"`` (the study's, the published computation), ``"bf16"`` (the fast mode: bf16 autocast)
    or ``"auto"`` (the demo's: bf16 on CUDA and on CPUs with native bf16 (AMX or AVX512-BF16), else fp32);
    ``channels_last=None`` turns the channels-last layout on exactly when the forward runs in bf16 (the fast mode).
    ``query_indices``: which of the checkpoint's 100 query embeddings the model keeps, in order (``num_queries``
    distinct slots in 0..99, e.g. from :func:`detr_nb_utils.analysis.queries.select_queries`); ``None`` is the original
    study's choice, the first ``num_queries``, and a tuple naming exactly those is stored as ``None``. ``num_workers``:
    :func:`make_config` sets the study's from the machine (:func:`default_num_workers`: up to 8 on a CUDA machine, 2
    elsewhere); the demo uses 0. ``run_name`` ``None``: :func:`variant_name`, ``dec{dec_layers}_q{num_queries}`` with
    ``_idx`` and a hash of ``query_indices`` appended when they are set, so runs keeping different query slots never
    share a folder. ``recipe``: the declared recipe arm (:mod:`.recipe`; :func:`make_config` sets its values, e.g.
    the warm-up's ``warmup_steps``, optimizer steps of a linear warm-up to ``lr``). ``threads``: torch's threads
    while the run computes (None: torch's default, one per core); fixed, a run gives bit-identical metrics whether
    it runs alone or beside others (:mod:`.side_by_side`), and the demo fixes it at 1.
    """

    profile: str = "study"
    # data
    data_root: str = "data/coco"
    image_dir: str | None = None
    annotation_file: str | None = None
    split_dir: str = "data/mini_coco"
    # your own data: a train and a validation set, each an instances file and its image folder, or a
    # folder laid out like COCO (dataset_dir); any category ids, any number of classes (the "dataset" label space)
    dataset_dir: str | None = None
    train_annotation_file: str | None = None
    train_image_dir: str | None = None
    val_annotation_file: str | None = None
    val_image_dir: str | None = None
    n_train: int = 4000
    n_val: int = 1000
    split_seed: int = 42
    max_train_images: int | None = None
    max_val_images: int | None = None
    min_size: int = VAL_SIZE
    max_size: int = MAX_SIZE
    train_scales: tuple[int, ...] = TRAIN_SCALES
    random_crop: bool = True
    # model
    checkpoint: str | None = "data/checkpoints/detr-r50-e632da11.pth"
    backbone: str = "resnet50"
    num_classes: int = 91
    num_queries: int = 100
    query_indices: tuple[int, ...] | None = None
    dec_layers: int = 6
    enc_layers: int = 6
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    eos_coef: float = 0.1
    class_head: str = "match"
    # optimisation
    epochs: int = 5
    batch_size: int = 2
    eval_batch_size: int = 2
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_drop: int | None = None
    eval_every: int = 1
    # the recipe arm (training/recipe.py): "original", "checkpoint_rates" or "warmup"; its values are in the fields
    recipe: str = "original"
    warmup_steps: int = 0
    # runtime
    seed: int = 42
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool | None = None
    num_workers: int = 2
    threads: int | None = None
    progress: bool = True
    out_dir: str = "runs/study"
    run_name: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # JSON gives lists and ints where tuples and floats are meant
            value = getattr(self, f.name)
            if f.name in ("train_scales", "query_indices") and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif f.type.startswith("float") and type(value) is int:
                object.__setattr__(self, f.name, float(value))
        if self.profile not in PROFILES:
            fail("profile", self.profile, f"one of {sorted(PROFILES)}")
        for check in CHECKS:
            check(self)
        if self.query_indices == tuple(range(self.num_queries)):  # the default choice, spelled out
            object.__setattr__(self, "query_indices", None)

    @property
    def run_dir(self) -> Path:
        """``<out_dir>/<run_name>``, the run folder (see :mod:`detr_nb_utils.training.runs`); without a
        ``run_name``, the variant's name (:func:`variant_name`) and, for a recipe arm other than the original,
        ``_<recipe>``."""
        arm = "" if self.recipe == ORIGINAL else f"_{self.recipe}"
        return Path(self.out_dir) / (self.run_name or variant_name(self.dec_layers, self.num_queries,
                                                                     self.query_indices) + arm)

    @property
    def own_data(self) -> bool:
        """Whether the run trains on the user's own dataset (``dataset_dir`` or the four train/val files) rather
        than on a split of ``data_root``."""
        return self.dataset_dir is not None or self.train_annotation_file is not None

    @property
    def arch(self) -> dict:
        """The :func:`~detr_nb_utils.models.detr.build_detr` arguments of this run's model, without the variant's
        ``dec_layers`` and ``num_queries`` and without ``dropout``: the architecture its checkpoint fixes."""
        return {"backbone": self.backbone, "num_classes": self.num_classes, "enc_layers": self.enc_layers,
                "hidden_dim": self.hidden_dim, "nheads": self.nheads, "dim_feedforward": self.dim_feedforward}

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {[f.name for f in fields(cls)]}")
        return cls(**d)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> RunConfig:
        """Read a config from a JSON file, or from JSON text. Every error in a file (not JSON, not an object, an
        unknown field, a bad value) is a ``ValueError`` naming the file."""
        text = str(path_or_text)
        if text.lstrip().startswith("{"):
            return cls.from_dict(json.loads(text))
        path = Path(path_or_text)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): repair it, "
                             f"or write it again with RunConfig.to_json") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a text file (not UTF-8): a config is the JSON RunConfig.to_json "
                             f"writes") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} holds a JSON {type(d).__name__}, not a config: expected an object of "
                             f"RunConfig fields")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def variant_name(dec_layers: int, num_queries: int, query_indices: tuple[int, ...] | None = None) -> str:
    """``dec{dec_layers}_q{num_queries}``, plus ``_idx`` and 8 hex digits of a hash of ``query_indices`` when the
    kept query slots are not the first ``num_queries``: the default run name of a variant."""
    name = f"dec{dec_layers}_q{num_queries}"
    if query_indices is not None:
        name += "_idx" + hashlib.sha256(",".join(map(str, query_indices)).encode()).hexdigest()[:8]
    return name


#: ``<variant>_seed<seed>``: the run folder of one training seed of a variant (:func:`seed_configs`)
SEEDED_RUN = re.compile(r"^(?P<variant>.+)_seed(?P<seed>\d+)$")


def seeded_run_name(variant: str, seed: int) -> str:
    """The run folder name of training seed ``seed`` of ``variant``, e.g. ``dec6_q100_seed42``."""
    return f"{variant}_seed{seed}"


def variant_of(run_name: str) -> str:
    """``dec6_q100_seed42`` -> ``dec6_q100``: the variant a seeded run belongs to (a name without a seed suffix is
    its own variant)."""
    m = SEEDED_RUN.match(run_name)
    return m["variant"] if m else run_name

PROFILES: dict[str, dict] = {
    "study": {},
    "demo": dict(
        data_root="data/synthetic/coco", split_dir="data/synthetic/mini_coco", n_train=400, n_val=100,
        checkpoint=TINY_CHECKPOINT, **CHECKPOINT_SHAPES["tiny"], backbone="tiny",
        # the one image size the tiny DETR was pre-trained at (shorter side 96), flips but no crops: the published
        # scales and crops scaled to 96 px collapse it (benchmarks/RESULTS.md, "The demo world")
        min_size=96, max_size=round(MAX_SIZE * 96 / VAL_SIZE), train_scales=(96,), random_crop=False,
        # the dropout its checkpoint was trained with, as the study keeps the official one's (0.1): with 0.1 the tiny
        # DETR, pre-trained without dropout, lost 21 points of AP in one epoch (benchmarks/RESULTS.md)
        dropout=0.0,
        # one torch thread per run: the tiny DETR's small tensors keep a second thread mostly idle, and two runs side
        # by side, one per core, give the same metrics as one after the other (benchmarks/RESULTS.md, "make demo")
        epochs=2, num_workers=0, threads=1, out_dir="runs/demo",
        # each run fine-tunes on the first 120 of the split's 400 training images: the demo's 19 runs then fit
        # 5 minutes on a 2-core laptop, and every lesson still shows (benchmarks/RESULTS.md, "make demo")
        max_train_images=120,
    ),
}


#: notebook 07_your_dataset in the demo profile: the demo's own dataset (made on first use by
#: :func:`~detr_nb_utils.data.synthetic_own.make_own_dataset`) and the study's 5 epochs instead of the demo
#: profile's 2, in which fresh class-head rows learn next to nothing (benchmarks/RESULTS.md, "Your own data")
DEMO_OWN_DATA = {"dataset_dir": "data/synthetic/own", "epochs": 5}


def default_num_workers(device: str = "auto", cores: int | None = None) -> int:
    """DataLoader workers for the study when none are asked for: ``min(8, cores - 2)`` (at least 2) when ``device``
    is or resolves to a CUDA GPU, else 2. ``cores``: this process's share of the machine's cores (divided among
    the processes ``torchrun`` starts on it).

    A bf16 step on a recent GPU consumes images faster than two workers decode and augment them (the loader table
    of ``benchmarks/RESULTS.md``), and the loader must not be what the GPU waits for. Two cores stay with
    the main process. On the CPU the step consumes a few images/s and extra workers would compete with it.
    """
    cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
    if cores is None:
        cores = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(2, min(8, cores - 2)) if cuda else 2


def _cuda_available() -> bool:
    import torch  # the only use of torch in this module
    return torch.cuda.is_available()


def make_config(profile: str | None = None, **params) -> RunConfig:
    """A validated :class:`RunConfig`: the profile's defaults, overridden by every ``params`` value not None.

    ``profile`` ``None``: the environment variable ``DETR_NB_PROFILE`` (how nbval runs the notebooks in demo
    mode), else ``"study"``. ``None`` in ``params`` means "the profile's default" (a notebook's parameters cell
    may list every name); to set a field to ``None`` explicitly use ``dataclasses.replace(cfg, field=None)``.
    ``recipe`` (default ``"original"``) sets the arm's values (:data:`.recipe.RECIPES`) over the profile's; a value
    given explicitly that contradicts them is refused.
    """
    profile = profile or os.environ.get(PROFILE_ENV) or "study"
    if profile not in PROFILES:
        fail("profile", profile, f"one of {sorted(PROFILES)}")
    valid = {f.name for f in fields(RunConfig)} - {"profile"}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"make_config: unknown parameter(s) {unknown}; valid: {sorted(valid)}")
    arm = recipe_values(params.get("recipe") or ORIGINAL, params)
    values = dict(PROFILES[profile], **arm, **{k: v for k, v in params.items() if v is not None})
    if "num_workers" not in values:
        values["num_workers"] = default_num_workers(values.get("device", "auto"))
    return RunConfig(profile=profile, **values)


#: training seeds per variant when a notebook's ``n_seeds`` is None: three in both profiles, the fewest whose spread
#: the analysis resamples (:data:`detr_nb_utils.analysis.run_bootstrap.MIN_SEEDS_RESAMPLED`), so that a difference
#: between decoders can be told from training noise; the original study's single run is ``n_seeds=1``
DEFAULT_SEEDS = {"study": 3, "demo": 3}
#: seeds of each of 05's other choices of 50 queries when its ``strategy_seeds`` is None: as many as the first 50's
#: in the study (None); one in the demo, whose time budget they would otherwise double (05 says so in its words)
QUERY_CHOICE_SEEDS = {"study": None, "demo": 1}


def seed_configs(cfg: RunConfig, n_seeds: int | None = None, name: str | None = None) -> list[RunConfig]:
    """``n_seeds`` copies of ``cfg`` with seeds ``cfg.seed, cfg.seed + 1, …``, each in its own run folder
    ``<name>_seed<seed>`` (``name``: default ``cfg.run_dir``'s name). ``n_seeds`` None: :data:`DEFAULT_SEEDS` of
    the profile. Used by notebooks 03-05; 06_analysis groups the folders back by variant."""
    n = DEFAULT_SEEDS[cfg.profile] if n_seeds is None else n_seeds
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        fail("n_seeds", n_seeds, "an integer >= 1 (or None for the profile's default)")
    base = name or cfg.run_dir.name
    return [replace(cfg, seed=cfg.seed + k, run_name=seeded_run_name(base, cfg.seed + k)) for k in range(n)]
