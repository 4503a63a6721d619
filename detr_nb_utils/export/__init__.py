"""Your model leaves the notebook: a run folder or a checkpoint as a Hugging Face model folder
(:func:`~.hugging_face.export_hf`, with a model card written from the run, :mod:`.model_card`) or an ONNX file
(:func:`~.onnx_export.export_onnx`); the command line is ``python -m detr_nb_utils.export`` (:mod:`.cli`).

The top of the package's layers, beside :mod:`detr_nb_utils.predict`: it reads models through
:mod:`detr_nb_utils.training.inference` and intervals through :mod:`detr_nb_utils.analysis`. The Hugging Face and
ONNX packages are optional (the ``export`` extra: ``pip install -e '.[export]'``) and imported only when an export
runs; importing this package needs none of them. Reading Hugging Face weights back is
:mod:`detr_nb_utils.models.hf_layout`.
"""
from .hugging_face import check_hf_folder, export_hf, freeze_as_published, hf_config, image_processor
from .model_card import checkpoint_card, model_card
from .onnx_export import check_onnx, export_onnx
from .output import ExportError

__all__ = ["ExportError", "check_hf_folder", "check_onnx", "checkpoint_card", "export_hf", "export_onnx",
           "freeze_as_published", "hf_config", "image_processor", "model_card"]
