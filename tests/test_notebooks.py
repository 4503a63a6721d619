"""The six notebooks: each .ipynb in sync with its jupytext source notebooks/NN_name.py (py:percent), their
committed form (thin, parameterised, no outputs, kernel python3) and, on the real COCO sample, a headless papermill
run of 01, 03 and 06."""
from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from detr_nb_utils.data.split import MANIFEST
from detr_nb_utils.training.config import DEMO_OWN_DATA, RunConfig, make_config
from detr_nb_utils.training.runs import (
    BEST,
    CONFIG,
    DETECTIONS,
    HISTORY,
    LAST,
    METRICS,
    load_run,
)

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = ["01_data_split", "02_checkpoint_inspection", "03_baseline", "04_shallow_decoder", "05_reduced_queries",
         "06_analysis", "07_your_dataset"]
MAX_FUNCTION_LINES = 10
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameters(nb) -> dict:
    """The ``parameters`` cell's names and values; fails unless every statement is ``name = <literal>`` or a pair of
    related names, ``a, b = <literal>, <literal>``."""
    values = {}
    for node in ast.parse(_code(nb)[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, \
            f"parameters cell: {ast.unparse(node)!r} is not a plain assignment"
        target = node.targets[0]
        if isinstance(target, ast.Tuple):
            names = [t.id for t in target.elts if isinstance(t, ast.Name)]
            literal = ast.literal_eval(node.value)  # raises unless plain values
            assert len(names) == len(target.elts) == len(literal), f"parameters cell: {ast.unparse(node)!r}"
            values |= dict(zip(names, literal))
        else:
            assert isinstance(target, ast.Name), f"parameters cell: {ast.unparse(node)!r} is not a plain assignment"
            values[target.id] = ast.literal_eval(node.value)  # raises unless a plain value
    return values


def _cells(nb) -> list[tuple[str, str, bool]]:
    """Each cell's type, source and whether it is tagged ``parameters``."""
    return [(c.cell_type, c.source, "parameters" in c.metadata.get("tags", [])) for c in nb.cells]


def test_every_notebook_has_its_py_source():
    """notebooks/ holds the seven pairs and nothing unpaired: NN_name.ipynb (run by papermill and nbval) and
    NN_name.py (the source, jupytext py:percent)."""
    ipynb, py = {p.stem for p in NB_DIR.glob("*.ipynb")}, {p.stem for p in NB_DIR.glob("*.py")}
    assert not ipynb - py, f"notebooks without their .py source: {sorted(ipynb - py)}"
    assert not py - ipynb, f".py files without their notebook: {sorted(py - ipynb)}; `make notebooks` writes it"
    assert sorted(ipynb) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_and_its_py_source_are_in_sync(name):
    """Both files of the pair, read with jupytext, hold the same cells (type, source, ``parameters`` tag), are
    paired with each other and name the kernel python3: an edit to one side only fails here."""
    ipynb, py = jupytext.read(NB_DIR / f"{name}.ipynb"), jupytext.read(NB_DIR / f"{name}.py")
    for nb in (ipynb, py):
        assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", f"{name}: not paired"
        assert dict(nb.metadata.get("kernelspec", {})) == KERNELSPEC
    want, got = _cells(py), _cells(ipynb)
    differ = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
    hint = "run `make notebooks` (jupytext --sync) and commit both files"
    assert len(want) == len(got), f"{name}: {len(want)} cells in the .py, {len(got)} in the .ipynb; {hint}"
    assert not differ, f"{name}: cells {differ} differ between the .py and the .ipynb; {hint}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_form(name):
    nb = _load(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "**Question.**" in nb.cells[0].source
    for cell in _code(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs committed"
    assert _code(nb)[0].metadata.get("tags") == ["parameters"]
    assert all("parameters" not in c.metadata.get("tags", []) for c in _code(nb)[1:])


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_plain_values_and_all_used(name):
    nb = _load(name)
    params = _parameters(nb)
    assert {"profile", "report_dir", "progress"} <= set(params)
    assert params["profile"] is None, "the profile comes from DETR_NB_PROFILE unless passed"
    read = {node.id for cell in _code(nb)[1:] for node in ast.walk(ast.parse(cell.source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    config_cell = _code(nb)[1].source
    assert "make_config(" in config_cell, "the cell after parameters builds the config"
    assert "config_parameters(globals())" in config_cell, "the config cell takes the parameters in one call"
    read |= {f.name for f in dataclasses.fields(RunConfig)} | {"profile", "progress"}  # handed over in that call
    unused = [p for p in params if p not in read]
    assert not unused, f"{name}: parameters never used: {unused}"
    calls = [n for n in ast.walk(ast.parse(config_cell)) if isinstance(n, ast.Call) and getattr(n.func, "id", "")
             == "make_config"]
    assert all(len(c.keywords) <= 2 for c in calls), f"{name}: the config cell repeats the parameters by name"


@pytest.mark.parametrize("name", NAMES)
def test_cells_are_thin_and_import_by_name(name):
    for cell in _code(_load(name)):
        src = cell.source
        assert "import *" not in src and "sys.path" not in src and "%run" not in src
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{name}: {node.name} is {length} lines; move it to the package"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ["study", "demo"])
def test_default_parameters_build_a_valid_config(name, profile):
    """The parameters cell as committed, then the config cell, for each profile: a validated config."""
    nb, scope = _load(name), {}
    exec(_code(nb)[0].source, scope)
    scope["profile"] = profile
    if name == "07_your_dataset" and profile == "study":  # the study has no dataset of yours to bring
        with pytest.raises(ValueError, match="07_your_dataset needs your dataset: pass -p dataset_dir"):
            exec(_code(nb)[1].source, scope)
        return
    if name == "07_your_dataset":  # the demo's own dataset (the setup cell makes it, from the project root)
        exec(_code(nb)[1].source, scope)
        assert scope["cfg"].dataset_dir == DEMO_OWN_DATA["dataset_dir"]
        study = make_config("study")  # the study's recipe and epochs, on the demo's data and tiny DETR
        assert scope["cfg"].own_data and (scope["cfg"].epochs, scope["cfg"].batch_size, scope["cfg"].lr) == \
            (study.epochs, study.batch_size, study.lr) == (DEMO_OWN_DATA["epochs"], 2, 1e-4)
        return
    exec(_code(nb)[1].source, scope)
    cfg = scope["cfg"]
    assert cfg.profile == profile and cfg.progress is False  # headless here: no widgets
    if "epochs" in scope:  # None parameters mean the profile's values: the study runs the original study's recipe
        default = make_config(profile)
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_backbone) == \
               (default.epochs, default.batch_size, default.lr, default.lr_backbone)


def test_training_notebooks_default_to_their_variant():
    want = {"03_baseline": (6, 100), "04_shallow_decoder": (3, 100), "05_reduced_queries": (3, 50)}
    for name, (layers, queries) in want.items():
        params = _parameters(_load(name))
        assert (params["dec_layers"], params["num_queries"]) == (layers, queries)
        assert params["epochs"] is None and params["lr"] is None  # the original study's recipe, from the profile
        assert params["n_seeds"] is None  # the profile's number of seeds: 3 in both
        assert params["recipe"] is None and params["parallel_runs"] is None


def test_analysis_parameters():
    """02 draws attention maps as widgets only in JupyterLab unless asked; 05 compares the two other choices of
    50 queries; 06 bootstraps 1,000 resamples and measures latency at the profile's size unless given."""
    p02, p05, p06 = (_parameters(_load(n)) for n in ("02_checkpoint_inspection", "05_reduced_queries",
                                                     "06_analysis"))
    assert p02["interactive"] is None
    assert p05["strategies"] == ["most_matched", "spread"] and p05["strategy_seeds"] is None
    assert p06["n_resamples"] == 1000 and p06["latency_size"] is None and p06["run_names"] is None


# ---- the notebooks on real COCO images (../shared/coco_val2017_sample) ---------------------------------------


@pytest.fixture(scope="module")
def real_sample_run(coco_sample, tmp_path_factory):
    """01, 03 and 06 executed by papermill in the study profile on a copy of the sample: a 4/2 split, one epoch
    at 128 px, a random-weight checkpoint in the official layout."""
    papermill = pytest.importorskip("papermill")
    from random_checkpoint import make_random_checkpoint

    tmp = tmp_path_factory.mktemp("real_sample")
    shutil.copytree(coco_sample, tmp / "coco", ignore=shutil.ignore_patterns("provenance.tsv", "SOURCES.md"))
    common = {"profile": "study", "data_root": str(tmp / "coco"), "split_dir": str(tmp / "split"),
              "report_dir": str(tmp / "report")}  # progress left to the policy: off when headless
    split = {"n_train": 4, "n_val": 2}
    train = {"checkpoint": str(make_random_checkpoint(tmp / "random.pth")), "out_dir": str(tmp / "runs"),
             "epochs": 1, "batch_size": 2, "min_size": 128, "max_size": 192, "train_scales": [96, 128],
             "num_workers": 0, "device": "cpu"}
    runs = {
        "01_data_split": {**common, **split},
        "03_baseline": {**common, **split, **train, "n_seeds": 1},  # the original study's single run
        "06_analysis": {**{k: v for k, v in {**common, **train}.items() if k in ("profile", "out_dir", "report_dir")},
                        "n_resamples": 50, "latency_size": [64, 96]},
    }
    for name, params in runs.items():
        papermill.execute_notebook(str(NB_DIR / f"{name}.ipynb"), str(tmp / f"{name}.ipynb"), parameters=params,
                                   kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return tmp


def test_real_sample_run_folder_is_complete(real_sample_run):
    run_dir = real_sample_run / "runs" / "dec6_q100_seed42"  # -p n_seeds 1, no recipe arm in the study profile
    assert [p.name for p in (real_sample_run / "runs").iterdir() if not p.name.startswith(".")] == [run_dir.name]
    for f in (CONFIG, MANIFEST, METRICS, HISTORY, LAST, BEST, f"{DETECTIONS}/epoch_0.npz", f"{DETECTIONS}/epoch_1.npz"):
        assert (run_dir / f).is_file(), f"{f} missing from the run folder"
    record = load_run(run_dir)
    assert record.complete and list(record.metrics.index) == [0, 1]
    assert record.config.data_root == str(real_sample_run / "coco") and record.config.profile == "study"
    assert record.split_manifest["n_train"] == 4 and record.split_manifest["n_val"] == 2
    assert record.metrics["val_AP"].notna().all() and "random_weights" not in record.metrics


def test_real_sample_exports_and_takeaways(real_sample_run):
    report = real_sample_run / "report"
    for fig in ("01_category_distribution", "01_objects_per_image", "03_dec6_q100_loss_curves",
                "03_dec6_q100_ap_curves", "06_loss_curves", "06_ap_curves", "06_ap_per_layer",
                "06_changes_and_differences"):
        assert (report / "figures" / f"{fig}.png").stat().st_size > 0 and (report / "figures" / f"{fig}.pdf").is_file()
    for table in ("01_split_summary", "03_dec6_q100_epochs", "06_headline", "06_comparison", "06_original_study",
                  "06_losses", "06_finetuning_gain", "06_seeds", "06_cost_vs_ap", "06_findings"):
        assert (report / "tables" / f"{table}.csv").is_file() and (report / "tables" / f"{table}.md").is_file()
        pd.read_csv(report / "tables" / f"{table}.csv")  # plainly: no stamp line in the data
    assert "2 validation images" in (report / "tables" / "01_takeaway.md").read_text()
    answer = (report / "tables" / "06_takeaway.md").read_text()
    assert answer.startswith("**dec6_q100**") and "has the highest COCO AP at the final epoch" in answer
    assert "Not compared, no run folders: dec3_q100 and dec3_q50." in answer  # says which runs are missing
    assert "Fine-tuning from the checkpoint changed AP by dec6_q100" in answer
    findings = json.loads((report / "tables" / "06_findings.json").read_text())
    assert findings["meta"]["n_images"] == 2 and findings["meta"]["n_resamples"] == 50


def test_real_sample_notebooks_hold_no_widget_state(real_sample_run):
    for name in ("01_data_split", "03_baseline"):
        text = (real_sample_run / f"{name}.ipynb").read_text()
        assert "application/vnd.jupyter.widget-view+json" not in text
        outputs = [o for c in json.loads(text)["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        assert not [o for o in outputs if o.get("name") == "stderr" and "IProgress" in o.get("text", "")]


def test_real_sample_baseline_diagnostics_and_takeaways(real_sample_run):
    """03 in the study profile draws its diagnostics from the run's saved detections, and 01 and 03 end on their
    computed takeaways: the split's yardstick, the fine-tuning change with its interval, the diagnostics' line."""
    report = real_sample_run / "report"
    for fig in ("03_class_ap", "03_sizes", "03_pr_curves", "03_confusion", "03_errors", "03_layer_errors",
                "03_loss_terms", "03_false_positives", "03_missed", "01_split_yardstick"):
        assert (report / "figures" / f"{fig}.png").stat().st_size > 0, fig
    for table in ("03_class_ap", "03_sizes", "03_confusion", "03_errors", "03_layer_errors", "01_split_yardstick"):
        assert (report / "tables" / f"{table}.csv").is_file(), table
    split = (report / "tables" / "01_takeaway.md").read_text()
    assert "random 4/2 splits of the same images" in split
    baseline = (report / "tables" / "03_dec6_q100_takeaway.md").read_text()
    assert "Fine-tuning dec6_q100 with recipe 'original' changed AP by" in baseline
    assert "Diagnostics of dec6_q100_seed42 (epoch 1)" in baseline


@pytest.mark.skipif(not Path("/proc/self/autogroup").is_file() or shutil.which("setsid") is None,
                    reason="Linux's session groups (autogroup) are not on this machine")
def test_a_kernel_started_under_nice_gives_its_session_that_priority():
    """Jupyter starts a kernel in a session of its own (setsid); Linux schedules a session as one group at
    priority 0 whatever `nice` says, unless the group gets the nice too: how make demo runs 02 and 07 beside the
    chain of the others without slowing it."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from detr_nb_utils.notebook.setup_cell import carry_nice_to_session; "
            "before = Path('/proc/self/autogroup').read_text().split()[-1]; carry_nice_to_session(); "
            "print(before, Path('/proc/self/autogroup').read_text().split()[-1])")
    niced = subprocess.run(["nice", "-n", "7", "setsid", sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parents[1])
    assert niced.stdout.split() == ["0", "7"]
    plain = subprocess.run(["setsid", sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1])
    assert plain.stdout.split() == ["0", "0"]


def test_make_demo_runs_every_notebook_once_after_what_it_reads():
    """`make demo` runs the notebooks side by side (make -j): each once, none before the notebooks whose output it
    reads when it starts (a notebook's target runs exactly those first); 04 and 05, which compare with the runs
    03 and each other train beside them, are told to wait for those runs (and train their own in one process);
    02 and 07, which nothing waits for, run at the lower priority."""
    import re
    import subprocess

    root = Path(__file__).parents[1]
    names = {p.name[:2]: p.stem for p in (root / "notebooks").glob("0*.ipynb")}

    def planned(target: str, *variables: str) -> list[tuple[str, str]]:
        plan = subprocess.run(["make", "-n", "-j1", "--no-print-directory", target, "PY=python", *variables], cwd=root,
                              capture_output=True, text=True, check=True).stdout
        return [(re.search(r"notebooks/(\d\d)_\w+\.ipynb", line)[1], line) for line in plan.splitlines()
                if "papermill" in line]

    assert not any("wait_for_runs" in line for _, line in planned("demo-notebooks"))  # one at a time: no waiting
    everything = planned("demo-notebooks", "DEMO_SIDE_BY_SIDE=1")  # as `make demo` runs them
    assert sorted(nb for nb, _ in everything) == sorted(names)
    assert {nb for nb, line in everything if line.lstrip().startswith("nice ")} == {"02", "07"}
    waits = {nb: re.search(r"-p wait_for_runs (\d+)", line) for nb, line in everything}
    assert {nb for nb, w in waits.items() if w} == {"04", "05"}
    assert all(int(waits[nb][1]) >= 600 for nb in ("04", "05"))
    assert {nb for nb, line in everything if "-p parallel_runs 1" in line} == {"04", "05"}
    reads = {"01": set(), "02": {"01"}, "03": {"01"}, "04": {"01"}, "05": {"01"},
             "06": {"01", "02", "03", "04", "05"}, "07": {"01"}}  # 04, 05: 03's runs by waiting for them
    for nb, before in reads.items():
        order = [n for n, _ in planned(f"demo-{names[nb]}")]
        assert set(order) == before | {nb} and order[-1] == nb, (nb, order)
