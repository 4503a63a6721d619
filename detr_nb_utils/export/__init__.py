"""Your model leaves the notebook: a run folder or a checkpoint as a Hugging Face model folder
(:func:`~.hugging_face.export_hf`, with a model card written from the run, :mod:`.model_card`) or an ONNX file
(:func:`~.onnx_export.export_onnx`); the command line is ``python -m detr_nb_utils.export`` (:mod:`.cli`).

The top of the package's layers, beside :mod:`detr_nb_utils.predict`: it reads models through
:mod:`detr_nb_utils.training.inference` and intervals through :mod:`detr_nb_utils.analysis`. The Hugging Face and
ONNX packages are optional (the ``export`` extra: ``pip install -e '.[export]'``) and imported only when an export
runs; importing this package needs none of them. Reading Hugging Face weights back is
:mod:`detr_nb_utils.models.hf_layout`.

``from detr_nb_utils.export import export_hf``: the names below, each loaded from its module on first use.
"""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "hugging_face": ("check_hf_folder", "export_hf", "freeze_as_published", "hf_config", "image_processor"),
    "model_card": ("checkpoint_card", "run_card"),
    "onnx_export": ("check_onnx", "export_onnx"),
    "output": ("ExportError",),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
