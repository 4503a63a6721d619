"""detr-mini-coco: the published DETR-R50, its matcher and set loss, data, fine-tuning and analysis, for the course
notebooks. Layers, each importing only from those before it::

    models  <-  data  <-  training  <-  analysis  <-  notebook

The top level holds the few names a person scripts with (``from detr_nb_utils import build_detr, run_experiment``);
everything else is imported from its subpackage (``from detr_nb_utils.analysis import ApBootstrap``), whose
``__all__`` lists its public names and the module each lives in. Every name is loaded on first use, so
``import detr_nb_utils`` (or a subpackage) stays cheap and a COCOeval worker process never imports torch.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__version__ = "0.1.0"


def _lazy_exports(package: str, where: dict[str, tuple[str, ...]]
                  ) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` (PEP 562) for ``package``, whose public names are listed in
    ``where`` (module relative to ``package`` -> the names defined in it). A name is imported from its module on
    first use and then kept as an attribute of ``package``. A listed name may not be a submodule's name: importing
    the submodule would shadow it."""
    index = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str) -> object:  # noqa: N807 (PEP 562's name)
        if name not in index:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{index[name]}", package), name)
        setattr(sys.modules[package], name, value)  # the next look-up finds it directly
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(index))

    return sorted(index), __getattr__, __dir__


#: the public API, what a person scripts with: module -> the names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "models.detr": ("TINY_DETR", "build_detr"),
    "models.matcher": ("HungarianMatcher",),
    "models.loss": ("SetCriterion",),
    "models.postprocess": ("postprocess",),
    "models.checkpoint": ("load_pretrained", "read_checkpoint"),
    "data.transforms": ("make_transforms",),
    "data.coco": ("build_dataset", "collate_fn"),
    "data.label_map": ("LabelMap",),
    "data.split": ("make_split",),
    "data.validate": ("validate_coco_dataset",),
    "training.config": ("RunConfig", "make_config"),
    "training.engine": ("evaluate_checkpoint", "run_experiment"),
    "training.runs": ("load_run",),
    "training.inference": ("model_from_checkpoint", "model_from_run", "predict_images"),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
