"""environment.yml and pyproject.toml install the same packages at the same pins, the environment the tests run in
satisfies them, and the README names the pins pyproject.toml sets."""
import importlib.metadata
import tomllib
from pathlib import Path

import yaml  # comes with papermill (dev extra)
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[Requirement]:
    """The core dependencies and the dev extra's, with the extras it includes by naming this package
    (``detr-nb-utils[export]``) expanded to their packages."""
    project = _pyproject()
    extras = project["optional-dependencies"]
    out = []
    for req in map(Requirement, project["dependencies"] + extras["dev"]):
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            out += [Requirement(r) for extra in sorted(req.extras) for r in extras[extra]]
        else:
            out.append(req)
    return out


def _environment() -> tuple[list[str], list[str]]:
    """environment.yml's conda dependencies (strings) and its pip section."""
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    return [d for d in deps if isinstance(d, str)], next(d["pip"] for d in deps if isinstance(d, dict))


def _by_name(reqs: list[Requirement]) -> dict[str, tuple]:
    return {canonicalize_name(r.name): (r.specifier, frozenset(r.extras), str(r.marker or "")) for r in reqs}


def test_environment_and_pyproject_name_the_same_packages_and_versions():
    conda, pip_section = _environment()
    assert "-e ." in pip_section  # the environment installs this package, editable
    env = [Requirement(r) for r in pip_section if not r.startswith("-e")]
    declared = _by_name(_declared())
    assert len(env) == len(_by_name(env)) and len(declared) == len(_declared()), "a package is listed twice"
    assert _by_name(env) == declared  # SpecifierSets compare as sets: ">=1,<2" equals "<2,>=1"
    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(_pyproject()["requires-python"]).contains(python.removeprefix("python=") + ".0")


def test_the_installed_packages_satisfy_the_pins():
    """What the tests run against is what pyproject.toml declares (local labels such as +cu130 ignored)."""
    wrong = {}
    for req in _declared():
        installed = importlib.metadata.version(req.name)
        if not req.specifier.contains(installed, prereleases=True):
            wrong[req.name] = (installed, str(req.specifier))
    assert not wrong, f"installed versions outside the declared ones (installed, wanted): {wrong}; `make setup`"


def test_torch_and_torchvision_are_pinned_exactly_and_the_readme_names_the_pins():
    reqs = {canonicalize_name(r.name): r for r in _declared()}
    readme = (ROOT / "README.md").read_text()
    for name in ("torch", "torchvision"):
        (spec,) = reqs[name].specifier  # one specifier, ...
        assert spec.operator == "==" and "*" not in spec.version, f"{name} is not pinned to one version: {spec}"
        assert f"`{name}=={spec.version}`" in readme, f"README.md does not name the {name} pin {spec.version}"
