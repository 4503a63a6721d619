"""Write ``requirements.lock``: the exact version of every package ``make setup`` installs.

pyproject.toml declares the ranges the package supports (torch >= 2.4, ...); the lock pins one version of each
declared dependency (the core, every extra, the build's ``setuptools``) and of everything they need, so that
``make setup`` rebuilds the environment the demo's numbers and the committed tiny checkpoint's record were made in.

    make lock                    # = .venv/bin/python tools/lock.py: resolve pyproject.toml, keep the pins already
                                 #   in requirements.lock, pin what is new, drop what is no longer needed
    make lock UPGRADE=1          # = tools/lock.py --upgrade: resolve afresh, the newest versions the ranges allow
    make lock FROM_ENV=1         # = tools/lock.py --prefer-installed: what the lock does not pin yet, pin at the
                                 #   version .venv already has where the ranges allow (else pip says which conflicts)
    python tools/lock.py --upgrade torch torchvision   # afresh for these packages only
    python tools/lock.py --check # does requirements.lock pin every declared dependency inside its range?
    python tools/lock.py --oldest  # print the constraints of `make test-oldest`: torch and torchvision at the
                                   # lower ends of their ranges, the rest as the lock pins it

The resolve is pip's own (``pip install --dry-run --ignore-installed --report``) with the interpreter that runs this
script, so the lock is for that Python and platform (the Makefile uses ``.venv``'s Python 3.11); nothing is
installed. A package that the resolve needs only through a requirement with an environment marker (the CUDA
libraries torch needs on Linux, say) keeps that marker in the lock, so other platforms skip it.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare venv (before `make setup`): the copy pip carries
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
#: the lock's header line naming the Python it was resolved for (environment.yml asks conda for the same)
PYTHON_LINE = "# python: "

HEADER = """\
# The exact versions `make setup` installs, then the package itself (editable, without dependencies): every
# dependency pyproject.toml declares (core, extras, build) and everything they need. Written by `make lock`
# (tools/lock.py), which keeps the pins already here; `make lock UPGRADE=1` resolves afresh. Do not edit by hand.
# pyproject.toml holds the ranges for installing into your own environment (README, "On your GPU machine").
"""


def declared(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[Requirement]]:
    """pyproject.toml's requirements by group: ``"dependencies"``, each extra (a self-reference such as
    ``detr-nb-utils[export]`` replaced by that extra's requirements) and ``"build"`` (build-system.requires)."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    me = canonicalize_name(project["name"])
    extras = {k: [Requirement(r) for r in v] for k, v in project.get("optional-dependencies", {}).items()}

    def expand(reqs: list[Requirement], seen: frozenset[str] = frozenset()) -> list[Requirement]:
        out = []
        for r in reqs:
            if canonicalize_name(r.name) != me:
                out.append(r)
                continue
            for extra in sorted(r.extras - seen):
                if extra not in extras:
                    raise ValueError(f"pyproject.toml: {r} names the extra {extra!r}, which is not declared")
                out += expand(extras[extra], seen | {extra})
        return out

    groups = {"dependencies": expand([Requirement(r) for r in project["dependencies"]])}
    groups |= {name: expand(reqs, frozenset({name})) for name, reqs in extras.items()}
    groups["build"] = [Requirement(r) for r in data["build-system"]["requires"]]
    return groups


def read_lock(path: Path = LOCK) -> tuple[dict[str, tuple[str, str]], str | None]:
    """The lock's pins, ``{canonical name: (version, marker or "")}``, and the Python it was resolved for. Refuses a
    line that is not ``name==version`` (with an optional ``; marker``) or a name pinned twice."""
    pins: dict[str, tuple[str, str]] = {}
    python = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith(PYTHON_LINE):
            python = line.removeprefix(PYTHON_LINE).split()[0]
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec, *more) = list(req.specifier) or [None]
        if spec is None or more or spec.operator != "==" or "*" in spec.version or req.extras:
            raise ValueError(f"{path}:{number}: {line!r} is not an exact pin (name==version); run `make lock`")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"{path}:{number}: {req.name} is pinned twice; run `make lock`")
        pins[name] = (spec.version, str(req.marker or ""))
    return pins, python


def check(pyproject: Path = ROOT / "pyproject.toml", lock: Path = LOCK) -> list[str]:
    """What makes ``lock`` out of date with ``pyproject``: a declared dependency it does not pin, or pins outside
    its declared range. Empty when the lock is good."""
    pins, _ = read_lock(lock)
    problems = []
    for group, reqs in declared(pyproject).items():
        for req in reqs:
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{req} ({group}) is not in {lock.name}")
            elif not req.specifier.contains(pin[0], prereleases=True):
                problems.append(f"{req} ({group}): {lock.name} pins {pin[0]}, outside the range")
    return problems


#: torch's own stack, which an older torch brings in other versions (its CUDA libraries, triton)
TORCH_STACK = re.compile(r"torch|torchvision|triton|nvidia-.*|cuda-.*")


def oldest(pyproject: Path = ROOT / "pyproject.toml", lock: Path = LOCK) -> list[str]:
    """The constraints of the oldest supported environment (``make test-oldest``): torch and torchvision at the
    lower ends of pyproject.toml's ranges (``torch>=2.4`` gives ``torch==2.4``, i.e. 2.4.0), everything else at the
    lock's pins except torch's own stack (:data:`TORCH_STACK`), which the older torch chooses."""
    reqs = {canonicalize_name(r.name): r for r in declared(pyproject)["dependencies"]}
    out = []
    for name in ("torch", "torchvision"):
        lower = [s.version for s in reqs[name].specifier if s.operator == ">="]
        if len(lower) != 1:
            raise ValueError(f"pyproject.toml: {reqs[name]} has no single lower bound (>=) to test")
        out.append(f"{name}=={lower[0]}")
    out += [f"{n}=={v}" + (f" ; {m}" if m else "") for n, (v, m) in read_lock(lock)[0].items()
            if not TORCH_STACK.fullmatch(n)]
    return out


def resolve(requirements: list[str], constraints: list[str]) -> dict:
    """pip's installation report for ``requirements`` in an empty environment of this interpreter, the versions in
    ``constraints`` preferred (pip fails when they conflict with the requirements)."""
    with tempfile.TemporaryDirectory() as tmp:
        report, pinned = Path(tmp) / "report.json", Path(tmp) / "constraints.txt"
        pinned.write_text("".join(f"{c}\n" for c in constraints))
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-c", str(pinned), *requirements]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            hint = ("; a pin kept from requirements.lock may conflict with a changed range: "
                    "`make lock UPGRADE=1`, or `python tools/lock.py --upgrade NAME`") if constraints else ""
            raise SystemExit(f"pip could not resolve pyproject.toml's requirements{hint}\n{done.stderr.strip()}")
        return json.loads(report.read_text())


def _active(req: Requirement, env: dict, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


def conditions(report: dict, roots: list[Requirement]) -> dict[str, str]:
    """Each resolved package's environment marker: ``""`` when some chain of requirements from ``roots`` reaches it
    with no marker, else the markers along the chains (``or`` of ``and``s), e.g. ``platform_system == "Linux"`` for
    torch's CUDA libraries. Markers naming an extra count as no marker."""
    env = report["environment"]
    meta = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in report["install"]}
    terms: dict[str, set[frozenset[str]]] = {name: set() for name in meta}
    extras: dict[str, set[str]] = {name: set() for name in meta}
    todo = [(frozenset(), r, set()) for r in roots]
    while todo:
        parent_term, req, parent_extras = todo.pop()
        if not _active(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        if name not in meta:
            raise RuntimeError(f"the resolve needs {req} but did not report it")
        edge = str(req.marker) if req.marker is not None and "extra" not in str(req.marker) else None
        term = parent_term | {edge} if edge else parent_term
        if any(t <= term for t in terms[name]) and req.extras <= extras[name]:
            continue  # reached before on a path with no more conditions, with these extras
        terms[name] = {t for t in terms[name] if not term <= t} | {term}
        extras[name] |= req.extras
        for t in terms[name]:
            todo += [(t, Requirement(r), extras[name]) for r in meta[name].get("requires_dist", [])]
    unreached = sorted(n for n, t in terms.items() if not t)
    if unreached:
        raise RuntimeError(f"the resolve reported packages no requirement leads to: {unreached}")

    def marker(ts: set[frozenset[str]]) -> str:
        if frozenset() in ts:
            return ""
        ands = sorted(" and ".join(f"({m})" if " or " in m else m for m in sorted(t)) for t in ts)
        return ands[0] if len(ands) == 1 else " or ".join(f"({a})" for a in ands)
    return {name: marker(ts) for name, ts in terms.items()}


def render(report: dict, roots: list[Requirement]) -> str:
    """The lock file's text for ``report``."""
    markers = conditions(report, roots)
    env = report["environment"]
    python = ".".join(env["python_full_version"].split(".")[:2])
    lines = [HEADER, f"{PYTHON_LINE}{python} (resolved with CPython {env['python_full_version']} on "
             f"{env['platform_system']} {env['platform_machine']}, pip {report['pip_version']})\n"]
    for item in sorted(report["install"], key=lambda i: canonicalize_name(i["metadata"]["name"])):
        name = canonicalize_name(item["metadata"]["name"])
        version = re.sub(r"\+.*", "", item["metadata"]["version"])  # a local label (+cu130) is not on the index
        lines.append(f"{name}=={version}" + (f" ; {markers[name]}" if markers[name] else "") + "\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", nargs="*", metavar="NAME",
                        help="resolve afresh: every package (no NAME) or the named ones; default: keep the lock's pins")
    parser.add_argument("--prefer-installed", action="store_true",
                        help="pin what the lock does not pin yet at the version this environment has installed")
    parser.add_argument("--check", action="store_true", help="only check the lock against pyproject.toml")
    parser.add_argument("--oldest", action="store_true",
                        help="only print the constraints of the oldest supported environment (make test-oldest)")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--out", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    if args.oldest:
        print("\n".join(oldest(args.pyproject, args.out)))
        return 0
    if args.check:
        problems = check(args.pyproject, args.out)
        for p in problems:
            print(f"{args.out.name} is out of date: {p}", file=sys.stderr)
        if problems:
            print("run `make lock` (then `make setup`)", file=sys.stderr)
        return 1 if problems else 0
    groups = declared(args.pyproject)
    roots = [r for reqs in groups.values() for r in reqs]
    keep = {}
    if args.out.is_file() and args.upgrade != []:
        drop = {canonicalize_name(n) for n in args.upgrade or ()}
        keep = {n: v for n, v in read_lock(args.out)[0].items() if n not in drop}
    constraints = [f"{n}=={v}" + (f" ; {m}" if m else "") for n, (v, m) in keep.items()]
    if args.prefer_installed:
        me = canonicalize_name(tomllib.loads(args.pyproject.read_text())["project"]["name"])
        installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
        constraints += [f"{n}=={re.sub(r'[+].*', '', v)}" for n, v in sorted(installed.items())
                        if n not in keep and n != me and n not in ("pip", "wheel")]
    report = resolve([str(r) for r in roots], constraints)
    text = render(report, roots)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    old = set(keep.items())
    new = read_lock(args.out)[0]
    changed = sorted(f"{n}=={v}" for n, (v, m) in new.items() if (n, (v, m)) not in old)
    removed = sorted(n for n in keep if n not in new)
    print(f"wrote {args.out} ({len(new)} packages for Python {platform.python_version()}"
          f"{'; new or changed: ' + ', '.join(changed) if changed and keep else ''}"
          f"{'; no longer needed: ' + ', '.join(removed) if removed else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
