"""pyproject.toml asks for ranges (torch >= 2.4), requirements.lock pins one version of everything inside them,
environment.yml installs the lock, the environment the tests run in is inside the ranges, and `pip install -e .`
beside a torch already in the range leaves that torch alone."""
import importlib.metadata
import json
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml  # comes with papermill (dev extra)
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _declared() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for reqs in lock.declared().values() for r in reqs}


def test_pyproject_asks_for_ranges_with_torch_2_4_and_torchvision_0_19_at_the_bottom():
    """No exact pin in pyproject.toml: an environment that has its own (CUDA) torch keeps it."""
    declared = _declared()
    pinned = {n: str(r.specifier) for n, r in declared.items() if any(s.operator in ("==", "===") for s in r.specifier)}
    assert not pinned, f"pyproject.toml pins exact versions (the lock is the place for those): {pinned}"
    for name, lowest, below in (("torch", "2.4.0", "2.3.1"), ("torchvision", "0.19.0", "0.18.1")):
        spec = declared[name].specifier
        assert spec.contains(lowest) and spec.contains(f"{lowest}+cu121") and not spec.contains(below), (name, spec)
        assert spec.contains("2.14.1" if name == "torch" else "0.29.1")  # and the lock's


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    assert lock.check() == []  # else: `make lock`
    pins, python = lock.read_lock()
    assert python is not None and SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                                               ["requires-python"]).contains(python + ".0")
    # the demo's committed checkpoint was made, and its AP recorded, with the torch the lock pins
    record = json.loads((ROOT / "data" / "pretrained" / "tiny_detr.json").read_text())
    assert pins["torch"][0] == record["torch"].split("+")[0]


def test_the_lock_check_names_what_is_missing_or_outside_its_range(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[build-system]\nrequires = ["setuptools>=77"]\n[project]\nname = "p"\n'
                         'dependencies = ["torch>=2.4", "numpy>=3", "no-such-package>=2"]\n'
                         '[project.optional-dependencies]\ndev = ["p[export]"]\nexport = ["nor-this-one>=1"]\n')
    problems = lock.check(pyproject, lock.LOCK)
    assert sorted(problems) == sorted([
        "numpy>=3 (dependencies): requirements.lock pins 2.4.6, outside the range",
        "no-such-package>=2 (dependencies) is not in requirements.lock",
        "nor-this-one>=1 (dev) is not in requirements.lock",  # the dev extra includes the export extra
        "nor-this-one>=1 (export) is not in requirements.lock"])


def test_a_lock_line_that_is_not_an_exact_pin_is_refused(tmp_path):
    bad = tmp_path / "requirements.lock"
    bad.write_text("# python: 3.11\ntorch>=2.4\n")
    with pytest.raises(ValueError, match=r"requirements.lock:2: 'torch>=2.4' is not an exact pin"):
        lock.read_lock(bad)
    bad.write_text("torch==2.4.0\nTorch==2.4.1\n")
    with pytest.raises(ValueError, match="pinned twice"):
        lock.read_lock(bad)


def _item(name: str, version: str, requires: list[str]) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": requires}}


def test_the_lock_keeps_the_markers_of_packages_only_some_platforms_need():
    """torch's CUDA libraries are Linux-only requirements: the lock says so, and other platforms skip them; a package
    also reached with no marker is unconditional; a marker naming an extra counts as none."""
    linux = 'platform_system == "Linux"'
    report = {"environment": {"platform_system": "Linux", "python_version": "3.11", "sys_platform": "linux",
                              "python_full_version": "3.11.7", "platform_machine": "x86_64"},
              "pip_version": "26.3",
              "install": [_item("torch", "2.14.1", [f"nvidia-cudnn==9; {linux}", f"nvidia-cublas==13; {linux}",
                                                    "filelock", 'colorama; sys_platform == "win32"']),
                          _item("nvidia-cudnn", "9", ["nvidia-cublas"]),
                          _item("nvidia-cublas", "13", []),
                          _item("filelock", "4", []),
                          _item("tqdm", "4.70", ['tensorboard; extra == "tb"']),
                          _item("tensorboard", "2.20", ["filelock"])]}
    roots = [Requirement("torch>=2.4"), Requirement("tqdm[tb]>=4.66")]
    markers = lock.conditions(report, roots)
    assert markers == {"torch": "", "nvidia-cudnn": linux, "nvidia-cublas": linux, "filelock": "", "tqdm": "",
                       "tensorboard": ""}
    text = lock.render(report, roots)
    assert f"nvidia-cublas==13 ; {linux}\n" in text and "torch==2.14.1\n" in text
    assert f"{lock.PYTHON_LINE}3.11 " in text
    with pytest.raises(RuntimeError, match="no requirement leads to"):
        lock.conditions({**report, "install": [*report["install"], _item("stray", "1", [])]}, roots)


def test_the_oldest_environment_takes_the_lower_ends_of_torch_and_torchvision_and_the_lock_for_the_rest():
    constraints = lock.oldest()
    assert constraints[:2] == ["torch==2.4", "torchvision==0.19"]
    names = [canonicalize_name(Requirement(c).name) for c in constraints]
    assert "numpy" in names and "pandas" in names and len(names) == len(set(names))
    assert not [n for n in names[2:] if n.startswith(("nvidia", "triton", "torch"))]  # torch 2.4 brings its own


def test_environment_yml_installs_the_lock_and_the_package():
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == [f"-r {lock.LOCK.name}", "-e ."]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == f"python={lock.read_lock()[1]}"  # the Python the lock was resolved for


def test_the_installed_packages_are_inside_the_declared_ranges():
    """What the tests run against satisfies pyproject.toml (local labels such as +cu130 ignored): the lock in
    `make setup`'s .venv, torch 2.4 in `make test-oldest`'s."""
    wrong = {}
    for req in _declared().values():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not req.specifier.contains(installed, prereleases=True):
            wrong[req.name] = (installed, str(req.specifier))
    assert not wrong, f"installed versions outside the declared ones (installed, wanted): {wrong}; `make setup`"


def _fake_env(tmp_path: Path, dists: dict[str, tuple[str, list[str]]]) -> Path:
    """A venv (no pip of its own) that sees this environment's packages behind ``dists``, fake installed
    distributions ``{name: (version, requirements)}`` that shadow the real ones. Its interpreter."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for name, (version, requires) in dists.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\n" + f"Name: {name}\nVersion: {version}\n"
                                       + "".join(f"Requires-Dist: {r}\n" for r in requires))
        (info / "INSTALLER").write_text("pip\n")
    return python


def _plan_editable_install(python: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`pip install -e .` as a dry run, offline (no index, no find-links, no pip configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                           "--quiet", "--report", str(tmp_path / "report.json"), "-e", str(ROOT)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("torch_version, vision_version", [("2.4.0+cu118", "0.19.0+cu118"),
                                                           ("2.7.1+cu126", "0.22.1+cu126")])
def test_pip_install_editable_beside_a_torch_in_the_range_keeps_that_torch(tmp_path, torch_version, vision_version):
    """A lab machine's CUDA build of torch (a local label such as +cu118) inside the range: pip's plan for
    `pip install -e .` installs the package and nothing else (offline: no index, so any other plan would fail)."""
    pytest.importorskip("setuptools", minversion="77")  # --no-build-isolation builds with this environment's
    python = _fake_env(tmp_path, {"torch": (torch_version, []),
                                  "torchvision": (vision_version, [f"torch=={torch_version.split('+')[0]}"])})
    done = _plan_editable_install(python, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(i["metadata"]["name"], i["download_info"]["dir_info"].get("editable")) for i in report["install"]] == [
        ("detr-nb-utils", True)]


def test_pip_install_editable_beside_a_torch_below_the_range_wants_another_torch(tmp_path):
    """The other side of the same check: torch 2.3 is outside the range, so pip plans to replace it (offline, it
    finds none and says which requirement it could not meet)."""
    pytest.importorskip("setuptools", minversion="77")
    python = _fake_env(tmp_path, {"torch": ("2.3.1+cu121", []), "torchvision": ("0.18.1+cu121", ["torch==2.3.1"])})
    done = _plan_editable_install(python, tmp_path)
    assert done.returncode != 0
    assert "No matching distribution found for torch>=2.4" in done.stderr or \
        "No matching distribution found for torchvision>=0.19" in done.stderr, done.stderr


def test_readme_names_the_lock_the_range_and_the_gpu_section():
    readme = (ROOT / "README.md").read_text()
    assert "## On your GPU machine" in readme
    assert "requirements.lock" in readme and "make lock" in readme and "make test-oldest" in readme
    assert f"`torch{_declared()['torch'].specifier}`" in readme


def test_make_test_oldest_stops_before_downloading_when_the_disk_is_short(tmp_path):
    """torch 2.4's CUDA build needs about 10 GB: on a disk with less, make test-oldest says so and what to free
    instead of failing half-way through pip, and creates nothing."""
    venv = tmp_path / "oldest"
    result = subprocess.run(["make", "--no-print-directory", "test-oldest", f"OLDEST={venv}", "OLDEST_GB=999999"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "needs about 999999 GB free" in result.stdout and "Free some space" in result.stdout
    assert not venv.exists()
