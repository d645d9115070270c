"""The installed dependencies against the versions autocritic was tested with, checked once at import.

The tested range of each dependency is its bound in `pyproject.toml`, read back from the installed package's own
metadata (so it holds for editable and wheel installs alike); `constraints.txt` in a source checkout pins the exact
versions CI passed with. A dependency outside its range, or a checkout without its lock, gets one warning line
naming what to do, never a traceback from deep inside a library.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

log = logging.getLogger("autocritic")

LOCK_NAME = "constraints.txt"
INSTALL_HINT = 'pip install -c constraints.txt -e ".[dev]"'
# The releases of the libraries that change what a training run computes, not only how fast (transformers 5.25's
# Falcon attention rounds the backward pass otherwise than 5.24's and pretrains another tiny Falcon from the same
# seed), as the documented offline backbone was built with them. constraints.txt pins the same (tested); they are
# here too because a wheel install has no lock.
DOCUMENTED_BUILD = {"torch": "2.13.0", "transformers": "5.24.0", "tokenizers": "0.23.3"}


def locked_versions(lock: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, names normalised as pip compares them."""
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def version_problems(requirements: list[str], installed: dict[str, str | None], lock: dict[str, str]) -> list[str]:
    """One line per required package that is missing or outside its tested range."""
    problems = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra (dev)
        name = normalise(requirement.name)
        have = installed.get(name)
        pinned = f"; constraints.txt pins {lock[name]}" if name in lock else ""
        if have is None:
            problems.append(f"{requirement.name} is not installed (tested: {requirement.specifier}{pinned})")
            continue
        try:
            inside = requirement.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            continue
        if not inside:
            problems.append(f"{requirement.name} {have} is installed, autocritic is tested with {requirement.specifier}{pinned}")
    return problems


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def numeric_versions() -> dict[str, str | None]:
    """The installed releases of the libraries `DOCUMENTED_BUILD` names, as a build records them."""
    return {name: installed_version(name) for name in DOCUMENTED_BUILD}


def other_releases(installed: dict[str, str | None], documented: dict[str, str] = DOCUMENTED_BUILD) -> list[str]:
    """'name X (the documented build: Y)' for each installed release other than the documented one; a local build
    tag (+cpu) is not a difference."""
    differences = []
    for name, have in installed.items():
        expected = documented.get(name)
        if have is None or expected is None:
            continue
        try:
            same = Version(have).public == Version(expected).public
        except InvalidVersion:
            same = have == expected
        if not same:
            differences.append(f"{name} {have} (the documented build: {expected})")
    return differences


def check_versions() -> list[str]:
    """Warn (one line each) about dependencies outside their tested range and a checkout without its lock."""
    try:
        requirements = metadata.requires("autocritic") or []
    except metadata.PackageNotFoundError:
        return []  # run from a source tree that was never installed: nothing to compare with
    checkout = Path(__file__).resolve().parents[2]
    lock_file = checkout / LOCK_NAME
    in_checkout = (checkout / "pyproject.toml").is_file()
    lock = locked_versions(lock_file) if lock_file.is_file() else {}
    names = {normalise(Requirement(r).name) for r in requirements if _parses(r)}
    problems = version_problems(requirements, {n: installed_version(n) for n in names}, lock)
    if in_checkout and not lock_file.is_file():
        problems.append(f"{lock_file} is missing: the exact versions CI passed with are unknown (git checkout it)")
    for problem in problems:
        log.warning("autocritic: %s. Install the tested versions: %s", problem, INSTALL_HINT)
    return problems


def _parses(text: str) -> bool:
    try:
        Requirement(text)
    except InvalidRequirement:
        return False
    return True
