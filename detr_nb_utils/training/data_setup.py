"""Where a run's data comes from: the split of a COCO-format pool (made when missing; the demo's synthetic pool too), or
your own dataset (validated, with its label map), and the datasets and loaders built from it.

:func:`prepare_data` gives a :class:`DataSetup`; :func:`make_dataset` and :func:`build_loader` turn it into a split's
dataset and loader at the config's sizes. Used by :mod:`.engine` (every run), notebooks 01-03 and 07, and the query
analysis of 05.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data.coco import CocoDetection, build_dataset, collate_fn, resolve_coco_layout, resolve_dataset_layout
from ..data.download import sha256_file
from ..data.label_map import LabelMap
from ..data.split import MANIFEST, load_manifest, make_split
from ..data.synthetic import make_synthetic_coco
from ..data.validate import DatasetSummary, validate_coco_dataset
from .config import TINY_CHECKPOINT, RunConfig
from .runtime import barrier, rank_world


@dataclass(frozen=True)
class DataSetup:
    """Where a run's data lives: the image folder(s), the train and validation instances files, the instances file
    the split was made from (your own data: the train file), the manifest a run folder keeps (the split's, or your
    dataset's files with their SHA-256), the label map, and for your own data what its validation found."""

    image_dir: Path
    train_file: Path
    val_file: Path
    manifest_file: Path | None
    annotation_file: Path
    val_image_dir: Path | None = None
    labels: LabelMap = field(default_factory=LabelMap.coco)
    manifest: dict = field(default_factory=dict, repr=False)
    #: your own dataset's sets, validated: "train"/"val" -> :class:`~detr_nb_utils.data.validate.DatasetSummary`
    summaries: dict = field(default_factory=dict, repr=False)

    def files(self, split: str) -> tuple[Path, Path]:
        """``(instances file, image folder)`` of ``split`` ("train" or "val")."""
        if split == "train":
            return self.train_file, self.image_dir
        return self.val_file, self.val_image_dir or self.image_dir


def _source_files(cfg: RunConfig) -> tuple[Path, Path]:
    """The image folder and the instances file the split is made from (demo: synthetic data, made if missing)."""
    if cfg.image_dir and cfg.annotation_file:
        return Path(cfg.image_dir), Path(cfg.annotation_file)
    try:
        image_dir, ann = resolve_coco_layout(cfg.data_root)
    except FileNotFoundError:
        if cfg.profile != "demo":
            raise
        synthetic = make_synthetic_coco(cfg.data_root, n_images=cfg.n_train + cfg.n_val, seed=cfg.split_seed)
        image_dir, ann = synthetic.images, synthetic.annotations
    return Path(cfg.image_dir or image_dir), Path(cfg.annotation_file or ann)


def _own_data_files(cfg: RunConfig) -> dict[str, tuple[Path, Path]]:
    if cfg.dataset_dir is not None:
        return resolve_dataset_layout(cfg.dataset_dir)
    return {s: (Path(getattr(cfg, f"{s}_annotation_file")), Path(getattr(cfg, f"{s}_image_dir")))
            for s in ("train", "val")}


def _prepare_own_data(cfg: RunConfig) -> DataSetup:
    """Your own dataset: both sets validated (:func:`~detr_nb_utils.data.validate.validate_coco_dataset`, named
    errors before any training), the same categories in both, the label map from them."""
    files = _own_data_files(cfg)
    sha = {s: sha256_file(f) for s, (f, _) in files.items()}
    summaries = {s: _validated(str(Path(f).resolve()), sha[s], str(Path(i).resolve()), cfg.progress)
                 for s, (f, i) in files.items()}
    (train, train_images), (val, val_images) = files["train"], files["val"]
    cats = {s: summary.category_names for s, summary in summaries.items()}
    if cats["train"] != cats["val"]:
        differ = sorted(set(cats["train"].items()) ^ set(cats["val"].items()))
        raise ValueError(f"the categories of {train} and {val} differ ((id, name) in one file only: {differ[:5]}"
                         f"{', ...' if len(differ) > 5 else ''}); both sets must list the same categories")
    manifest = {"dataset": {s: {"annotation_file": str(f), "image_dir": str(i), "sha256": sha[s]}
                            for s, (f, i) in files.items()}}
    return DataSetup(train_images, train, val, None, train, val_images,
                     LabelMap.from_categories({"id": k, "name": v} for k, v in cats["train"].items()), manifest,
                     summaries)


@functools.lru_cache(maxsize=16)
def _validated(annotation_file: str, sha256: str, image_dir: str, progress: bool) -> DatasetSummary:
    """:func:`~detr_nb_utils.data.validate.validate_coco_dataset` once per process for an annotation file's content
    (``sha256``) and image folder: a notebook training two runs on one dataset decodes its images once."""
    return validate_coco_dataset(annotation_file, image_dir, progress=progress)


def _prepare_data(cfg: RunConfig) -> DataSetup:
    if cfg.checkpoint is not None and Path(cfg.checkpoint).resolve() == Path(TINY_CHECKPOINT).resolve():
        check_committed_checkpoint(cfg.checkpoint)
    if cfg.own_data:
        return _prepare_own_data(cfg)
    image_dir, ann = _source_files(cfg)
    split_dir = Path(cfg.split_dir)
    if not (split_dir / MANIFEST).is_file():
        make_split(ann, split_dir, cfg.n_train, cfg.n_val, cfg.split_seed)
    m = load_manifest(split_dir)
    wanted = {"n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.split_seed}
    found = {k: m[k] for k in wanted}
    if found != wanted or m["source"]["sha256"] != sha256_file(ann):
        raise ValueError(f"the split in {split_dir} was made with {found} from {m['source']['file']}, the config asks "
                         f"for {wanted} from {ann}; choose another split_dir or delete {split_dir}")
    return DataSetup(image_dir, split_dir / "train.json", split_dir / "val.json", split_dir / MANIFEST, ann,
                     manifest=m)


def check_committed_checkpoint(path: str | Path) -> None:
    """Refuse the demo world's committed checkpoint (:data:`.config.TINY_CHECKPOINT`) when it is missing or its
    SHA-256 differs from the one recorded beside it (``<stem>.json``, written by :mod:`.pretrain`)."""
    path = Path(path)
    record = path.with_suffix(".json")
    remake = (f"restore it with `git checkout -- {path.parent}` (it is committed with the project), or make it "
              f"again with `make pretrain`")
    if not path.is_file() or not record.is_file():
        raise FileNotFoundError(f"the demo's pre-trained tiny DETR {path} (or its record {record.name}) is missing: "
                                f"{remake}.")
    want, found = json.loads(record.read_text())["sha256"], sha256_file(path)
    if found != want:
        raise ValueError(f"{path} has SHA-256 {found[:12]}…, its record {record} says {want[:12]}…: the file was "
                         f"changed or damaged; {remake}.")


def prepare_data(cfg: RunConfig) -> DataSetup:
    """Find the images and make what is missing: the split, and in the demo profile the synthetic pool; or, for your
    own dataset (``cfg.own_data``), validate it and make its label map. The demo's committed checkpoint is checked
    against its recorded SHA-256 (:func:`check_committed_checkpoint`).
    Under torch.distributed rank 0 makes them while the others wait."""
    if rank_world()[0] == 0:
        setup = _prepare_data(cfg)
    barrier()
    return setup if rank_world()[0] == 0 else _prepare_data(cfg)


def make_dataset(cfg: RunConfig, data: DataSetup, split: str) -> CocoDetection:
    """The ``split`` ("train" or "val") side of the run's data with its transforms at ``cfg``'s sizes (validation:
    shorter side ``min_size``; training: ``train_scales``, the published crop sizes scaled by ``min_size / 800``),
    limited to ``max_train_images`` / ``max_val_images``. Used by the loaders and by notebook 02."""
    train = split == "train"
    return build_dataset(*data.files(split), split, labels=data.labels,
                         max_images=cfg.max_train_images if train else cfg.max_val_images,
                         scales=cfg.train_scales, max_size=cfg.max_size, val_size=cfg.min_size,
                         **({"random_crop": cfg.random_crop} if train else {}))


def build_loader(cfg: RunConfig, data: DataSetup, split: str, device: torch.device) -> DataLoader:
    """The ``split`` loader. train: a sampler shuffling from (``seed``, epoch) (call ``set_epoch``), last
    incomplete batch dropped; val: in order, ``eval_batch_size`` per batch. Sharded under torch.distributed.

    Pinned memory on CUDA. Workers are not persistent: fresh workers each epoch draw their augmentation seeds
    from the main process's generator, which a checkpoint restores, so a resumed run repeats the crops of an
    uninterrupted one, at the price of starting ``num_workers`` processes again each epoch."""
    rank, world = rank_world()
    train = split == "train"
    dataset = make_dataset(cfg, data, split)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed) if train else \
        DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
    return DataLoader(dataset, batch_size=cfg.batch_size if train else cfg.eval_batch_size, sampler=sampler,
                      drop_last=train, collate_fn=collate_fn, num_workers=cfg.num_workers,
                      pin_memory=device.type == "cuda")
