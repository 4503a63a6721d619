"""The package's shape: imports flow one way (models <- data <- training <- analysis <- notebook) without a cycle,
the command-line entry points at the top level sit above every layer and are imported by none, the public names load
from the top level, the light modules stay light, and the README's layout table is the tree."""
from __future__ import annotations

import ast
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
    """The download CLI needs no torch, and the COCOeval worker processes start without it (spawned workers
    import only what scoring needs)."""
    assert GRAPH["detr_nb_utils.data.download"] == set()
    code = ("import sys, detr_nb_utils.data.download, detr_nb_utils.training.coco_eval; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_load_from_the_top_level():
    assert {"build_detr", "HungarianMatcher", "SetCriterion", "load_pretrained", "make_split", "make_transforms",
            "make_config", "RunConfig", "run_experiment", "setup_notebook", "save_fig", "save_table"} \
        <= set(detr_nb_utils.__all__)
    for name in detr_nb_utils.__all__:
        assert getattr(detr_nb_utils, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'build_model_typo'"):
        detr_nb_utils.build_model_typo  # noqa: B018


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
