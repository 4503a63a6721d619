"""Fine-tuning: the run configuration, the engine, the COCO evaluation, the run folders, the command line
(``python -m detr_nb_utils.training``). Imports from :mod:`detr_nb_utils.models` and :mod:`detr_nb_utils.data`.

Kept free of imports: the COCOeval worker processes import :mod:`.coco_eval` without torch."""
