"""The lock files are what every install uses (README, .ci/run, both images): they must cover pyproject.toml.

A dependency added to pyproject.toml but not re-locked would install fine on a machine that
already has it and fail on a fresh one; these checks catch that before CI's fresh venv does.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEV, SERVICE, TRAIN = "requirements.txt", "requirements/service.txt", "requirements/train.txt"  # dev: the root lock
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", text, re.M)}


def _requirements(extras: list[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        for raw in PYPROJECT["optional-dependencies"][extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "remi-match":
                reqs += _requirements(sorted(req.extras))
            else:
                reqs.append(req)
    return reqs


# both images sync and publish index versions through object storage (the `remote` extra)
@pytest.mark.parametrize(("lock", "extras"), [(SERVICE, ["remote"]), (TRAIN, ["train", "remote"]), (DEV, ["dev"])])
def test_every_declared_dependency_is_pinned_in_its_lock_at_an_allowed_version(lock: str, extras: list[str]) -> None:
    pins = _pins(lock)
    for req in _requirements(extras):
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is in pyproject.toml but not in {lock}: run requirements/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock} pins {name}=={pins[name]}, not {req}"


@pytest.mark.parametrize("lock", [SERVICE, TRAIN, DEV])
def test_locks_leave_torch_out_and_hash_every_pin(lock: str) -> None:
    text = (ROOT / lock).read_text()
    assert "torch" not in _pins(lock), "torch must stay out of the hashed lock (its build depends on the machine)"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for block in blocks:
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, f"unhashed pin in {lock}: {block.splitlines()[0]}"


def test_service_and_train_locks_agree_with_the_dev_lock() -> None:
    dev = _pins(DEV)
    for lock in (SERVICE, TRAIN):
        for name, version in _pins(lock).items():
            assert dev.get(name) == version, f"{lock} pins {name}=={version}, {DEV} {dev.get(name)}"


def test_every_install_path_uses_the_lock() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "venv" in ci and "--require-hashes -r requirements.txt" in ci
    readme_first_screen = (ROOT / "README.md").read_text()[:1500]
    assert "--require-hashes -r requirements.txt" in readme_first_screen
    assert "requirements/service.txt" in (ROOT / "docker" / "api.Dockerfile").read_text()
    assert "requirements/train.txt" in (ROOT / "docker" / "jobs.Dockerfile").read_text()


def test_the_standard_lock_pins_exactly_what_requirements_txt_pins() -> None:
    """pylock.toml (PEP 751) is the same resolution as requirements.txt, in the standard format
    that uv and other tools install from; pip reads requirements.txt. They must never drift."""
    lock = tomllib.loads((ROOT / "pylock.toml").read_text())
    packages = lock["packages"]
    assert {canonicalize_name(p["name"]): p["version"] for p in packages} == _pins(DEV)
    for package in packages:  # every file of every pinned release carries its sha256
        files = [package["sdist"]] if "sdist" in package else []
        files += package.get("wheels", [])
        assert files and all(f["hashes"].get("sha256") for f in files), package["name"]


def _uv_lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _torch_closure() -> set[str]:
    """torch and what it needs in this environment (the CI venv has the pinned CPU build installed)."""
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_the_root_uv_lock_was_written_from_the_current_pyproject() -> None:
    """uv.lock records the requirements it was resolved from; a dependency changed in pyproject.toml
    without running requirements/lock.sh leaves them different (uv sync --locked would refuse it)."""
    project = next(p for p in _uv_lock()["package"] if p["name"] == "remi-match")

    def key(name: str, extras: list[str] | frozenset[str], spec: str, marker: str) -> tuple[str, str, str, str]:
        return (canonicalize_name(name), ",".join(sorted(extras)), str(SpecifierSet(spec)), marker)

    locked = {
        key(r["name"], r.get("extras", []), r.get("specifier", ""), r.get("marker", ""))
        for r in project["metadata"]["requires-dist"]
    }
    declared = {key(r.name, r.extras, str(r.specifier), "") for r in map(Requirement, PYPROJECT["dependencies"])}
    for extra, raws in PYPROJECT["optional-dependencies"].items():
        declared |= {key(r.name, r.extras, str(r.specifier), f"extra == '{extra}'") for r in map(Requirement, raws)}
    assert locked == declared, "pyproject.toml changed since uv.lock was written: run requirements/lock.sh"


def test_the_root_uv_lock_leaves_torch_out_and_hashes_every_file() -> None:
    packages = [p for p in _uv_lock()["package"] if p["source"].get("registry")]
    assert packages and "torch" not in {p["name"] for p in packages}
    for package in packages:
        files = [package["sdist"]] if "sdist" in package else []
        files += package.get("wheels", [])
        assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]


def test_requirements_txt_pins_the_versions_of_the_root_uv_lock() -> None:
    """requirements.txt is uv.lock's resolution for Python 3.11 on Linux (pip's format); torch's own
    dependencies, which uv.lock leaves out with torch, are the only pins it adds."""
    locked: dict[str, set[str]] = {}
    for package in _uv_lock()["package"]:
        locked.setdefault(package["name"], set()).add(package["version"])
    pins = _pins(DEV)
    for name, version in pins.items():
        if name in locked:
            assert version in locked[name], f"{DEV} pins {name}=={version}, uv.lock has {sorted(locked[name])}"
    only_here = set(pins) - set(locked)
    assert only_here <= _torch_closure(), f"pinned in {DEV} but not in uv.lock: {sorted(only_here - _torch_closure())}"
