"""The data: COCO detection datasets and their transforms, the seeded mini-COCO split, the COCO categories, the
offline demo's synthetic stand-ins, atomic file writes and the checksummed downloads. Imports from
:mod:`detr_nb_utils.models` only.

``from detr_nb_utils.data import make_split, CocoDetection``: the names below, each loaded from its module on first
use."""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "categories": ("COCO_CATEGORIES", "COCO_NAMES"),
    "coco": ("CocoDetection", "build_dataset", "collate_fn", "resolve_dataset_layout"),
    "label_map": ("LabelMap",),
    "validate": ("DatasetError", "validate_coco_dataset"),
    "transforms": ("make_transforms",),
    "split": ("CROWDED_THRESHOLD", "largest_share_gap", "load_manifest", "make_split", "random_split_gaps",
              "split_diversity", "verify_split"),
    "images": ("ImageReadError", "read_image"),
    "synthetic": ("make_synthetic_coco",),
    "synthetic_own": ("OWN_CLASSES", "make_own_dataset"),
    "download": ("download_checkpoint", "download_coco"),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
