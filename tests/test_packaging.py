"""environment.yml and pyproject.toml install the same packages at the same pins."""
import re
from pathlib import Path

import tomllib
import yaml  # comes with papermill (dev extra)

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_lines = [r for r in pip_section if not r.startswith("-e")]
    assert "-e ." in pip_section  # the environment installs this package, editable
    assert {_name(r): r.replace(" ", "") for r in declared} == {_name(r): r.replace(" ", "") for r in env_lines}


def test_torch_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
