"""The package's shape: imports flow one way (models <- data <- training <- analysis <- notebook) without a cycle,
the command-line entry points at the top level sit above every layer and are imported by none, the top level is a
small public API and each subpackage lists where its names live, the light modules stay light, and the README's
layout table is the tree."""
from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import detr_nb_utils

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "detr_nb_utils"
#: ``export`` (Hugging Face and ONNX) sits above analysis: it reads models through training and intervals through
#: analysis, and nothing below imports it
LAYERS = ("models", "data", "training", "analysis", "notebook", "export")
#: top-level command lines (``python -m detr_nb_utils.<name>``): above every layer, may import any, imported by none
ENTRY_POINTS = {"detr_nb_utils.predict"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (anywhere in the file, relative or absolute), as dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("detr_nb_utils"):
                for alias in node.names:  # ``from . import atomic`` imports a module
                    sub = f"{target}.{alias.name}"
                    found.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("detr_nb_utils")}
    return found - {module}


GRAPH = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [m for m in GRAPH if m != "detr_nb_utils" and m not in ENTRY_POINTS and _layer(m) is None]
    assert not loose, f"modules outside models/data/training/analysis/notebook and the entry points: {loose}"


def test_imports_flow_from_lower_layers_only():
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets
              if m != "detr_nb_utils" and m not in ENTRY_POINTS and _layer(t) is not None and _layer(t) > _layer(m)]
    assert not upward, f"imports from a higher layer: {upward}"


def test_nothing_imports_an_entry_point():
    importers = [(m, t) for m, targets in GRAPH.items() for t in targets if t in ENTRY_POINTS]
    assert not importers, f"entry points are command lines, imported by nothing in the package: {importers}"


def test_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH.get(m, ())):
            if t == "detr_nb_utils":
                continue
            assert state.get(t) != 1, f"import cycle: {' -> '.join(path + [m, t])}"
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state and m != "detr_nb_utils":
            visit(m, [])


def test_download_and_coco_eval_import_nothing_heavy():
    """The download CLI needs no torch (it imports only the official checkpoint's record, itself standard library
    only), and the COCOeval worker processes start without it (spawned workers import only what scoring needs)."""
    assert GRAPH["detr_nb_utils.data.download"] <= {"detr_nb_utils.models.official"}
    assert GRAPH["detr_nb_utils.models.official"] == set()
    code = ("import sys, detr_nb_utils.data.download, detr_nb_utils.training.coco_eval; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _loaded_after(code: str) -> dict:
    """What a fresh interpreter has imported after running ``code``: ``torch`` (bool) and ``package``, the
    sorted package modules."""
    probe = (f"{code}\nimport json, sys\nprint(json.dumps({{'torch': 'torch' in sys.modules, 'package': sorted("
             f"m for m in sys.modules if m.startswith('detr_nb_utils'))}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_package_and_its_subpackages_is_cheap():
    """``import detr_nb_utils`` and every subpackage load no module of the package beyond the packages themselves,
    and no torch; a name is loaded with its module only when first used."""
    found = _loaded_after("import detr_nb_utils, " + ", ".join(f"detr_nb_utils.{layer}" for layer in LAYERS))
    assert found == {"torch": False, "package": sorted(["detr_nb_utils", *(f"detr_nb_utils.{x}" for x in LAYERS)])}
    found = _loaded_after("from detr_nb_utils.training import make_config")  # its module and what it imports
    assert "detr_nb_utils.training.config" in found["package"]
    assert not {"detr_nb_utils.training.engine", "detr_nb_utils.analysis.comparison"} & set(found["package"])


#: the public API: at most this many names at the top level
MAX_TOP_LEVEL = 25
PACKAGES = ("detr_nb_utils", *(f"detr_nb_utils.{layer}" for layer in LAYERS))


def _defined_at_top(module: str) -> set[str]:
    """The names ``module``'s file defines at its top level (def, class, assignment), not those it imports."""
    tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def test_the_top_level_is_a_small_public_api():
    assert len(detr_nb_utils.__all__) <= MAX_TOP_LEVEL, detr_nb_utils.__all__
    assert {"build_detr", "load_pretrained", "HungarianMatcher", "SetCriterion", "make_config", "RunConfig",
            "run_experiment", "load_run", "make_split", "make_transforms", "validate_coco_dataset",
            "predict_images"} <= set(detr_nb_utils.__all__)
    with pytest.raises(AttributeError, match="'detr_nb_utils' has no attribute 'save_fig'"):
        detr_nb_utils.save_fig  # noqa: B018 (a notebook helper: detr_nb_utils.notebook.save_fig)
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"The top level holds the few names a script needs \(([^)]*)\)", readme)
    assert listed, "README's Layout section no longer lists the top-level names"
    assert sorted(re.findall(r"`(\w+)`", listed[1])) == detr_nb_utils.__all__


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_name_lives_in_the_module_its_list_names(package):
    """Each name a package lists is defined (not imported) in the module its list gives, is that object when
    imported from the package, and is not also the name of a submodule (which would shadow it)."""
    mod = importlib.import_module(package)
    index = {name: where for where, names in mod._PUBLIC.items() for name in names}
    assert sorted(index) == mod.__all__ and set(mod.__all__) <= set(dir(mod))
    for name, where in index.items():
        module = f"{package}.{where}"
        assert name in _defined_at_top(module), f"{package} lists {name} in {module}, which does not define it"
        value = getattr(importlib.import_module(module), name)
        assert getattr(mod, name) is value
        if callable(value) and hasattr(value, "__module__"):
            assert value.__module__ == module, (name, value.__module__, module)
        shadow = ROOT / Path(*package.split(".")) / name
        assert not (shadow.with_suffix(".py").exists() or shadow.is_dir()), f"{name} is also a submodule of {package}"
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'build_model_typo'"):
        getattr(mod, "build_model_typo")


def test_every_top_level_name_is_in_its_subpackage_list():
    """The top level is a selection of the subpackages' names: importing a name from its subpackage always works
    (apart from ``postprocess``, which shares its module's name)."""
    for where, names in detr_nb_utils._PUBLIC.items():
        layer, module = where.split(".")
        for name in names:
            listed = importlib.import_module(f"detr_nb_utils.{layer}")._PUBLIC
            assert name in listed.get(module, ()) or name == module == "postprocess", (name, where)


def test_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    for layer in LAYERS:
        row = re.search(rf"^\| `detr_nb_utils/{layer}/` \|(.*)$", readme, re.M)
        assert row, f"README's layout table has no row for detr_nb_utils/{layer}/"
        named = set(re.findall(r"`([a-z_]+)`", row[1]))
        files = {p.stem for p in (PKG / layer).glob("*.py")} - {"__init__", "__main__"}
        assert files <= named, f"detr_nb_utils/{layer}/ modules missing from the README: {sorted(files - named)}"
    top = {f"detr_nb_utils.{p.stem}" for p in PKG.glob("*.py")} - {"detr_nb_utils.__init__"}
    assert top == ENTRY_POINTS, f"top-level modules must be the entry points {sorted(ENTRY_POINTS)}: {sorted(top)}"
    for module in ENTRY_POINTS:
        path = module.replace(".", "/") + ".py"
        assert re.search(rf"^\| `{re.escape(path)}` \|", readme, re.M), f"README's layout table has no row for {path}"
