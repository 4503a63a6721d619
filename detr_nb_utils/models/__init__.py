"""DETR itself, file by file comparable with the published ``models/``: the model (:mod:`.detr`), its backbone,
transformer and positional encoding, the Hungarian matcher and the set loss, the post-processing, the box formats,
loading the official checkpoint (:mod:`.checkpoint`), and the speed-only fast mode (:mod:`.fast`). Imports nothing
from the rest of the package.

``from detr_nb_utils.models import build_detr, SetCriterion``: the names below, each loaded from its module on first
use (the post-processing function shares its module's name: ``from detr_nb_utils.models.postprocess import
postprocess``, or the top level's ``detr_nb_utils.postprocess``)."""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "detr": ("DETR", "TINY_DETR", "build_detr", "parameter_table"),
    "matcher": ("HungarianMatcher",),
    "loss": ("LOSS_VIEWS", "SetCriterion", "loss_views"),
    "checkpoint": ("CheckpointError", "LoadReport", "adapt_state_dict", "load_pretrained", "read_checkpoint"),
    "fast": ("model_forward", "set_fast_mode"),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
