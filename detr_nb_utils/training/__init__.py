"""Fine-tuning: the run configuration, the engine, the COCO evaluation, the run folders, the command line
(``python -m detr_nb_utils.training``). Imports from :mod:`detr_nb_utils.models` and :mod:`detr_nb_utils.data`.

``from detr_nb_utils.training import make_config, run_experiment``: the names below, each loaded from its module on
first use, so importing the package stays free of torch: the COCOeval worker processes import :mod:`.coco_eval`
without it."""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "config": ("DEMO_OWN_DATA", "QUERY_CHOICE_SEEDS", "TINY_CHECKPOINT", "RunConfig", "make_config", "seed_configs"),
    "recipe": ("DEFAULT_ARMS", "RECIPES", "RECOMMENDED_RECIPE"),
    "side_by_side": ("plan_runs", "run_all"),
    "data_setup": ("make_dataset", "prepare_data"),
    "engine": ("build_model", "evaluate_checkpoint", "run_experiment"),
    "evaluation": ("evaluate",),
    "runs": ("RunRecord", "load_run"),
    "runtime": ("resolve_device",),
    "inference": ("model_from_checkpoint", "model_from_run", "predict_images"),
    "prediction_files": ("OutputFolderError", "write_outputs"),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
