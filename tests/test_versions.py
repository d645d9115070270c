"""The dependency check at import, and the lock file agreeing with the bounds in pyproject.toml."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from autocritic.versions import (
    DOCUMENTED_BUILD,
    check_versions,
    locked_versions,
    normalise,
    other_releases,
    version_problems,
)

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = ["transformers>=5.24,<5.26", "torch>=2.13,<2.14", "pytest>=9; extra == 'dev'"]


def test_a_package_outside_its_tested_range_is_named_with_both_versions():
    [problem] = version_problems(REQUIREMENTS, {"transformers": "5.26.0", "torch": "2.13.0+cpu"}, {"transformers": "5.24.0"})
    assert problem == "transformers 5.26.0 is installed, autocritic is tested with <5.26,>=5.24; constraints.txt pins 5.24.0"


def test_versions_inside_the_range_pass_local_builds_included():
    assert version_problems(REQUIREMENTS, {"transformers": "5.25.0", "torch": "2.13.0+cu130"}, {}) == []


def test_a_missing_package_is_named_and_dev_extras_are_not_required():
    [problem] = version_problems(REQUIREMENTS, {"transformers": "5.24.0", "torch": None, "pytest": None}, {})
    assert problem.startswith("torch is not installed")


def test_the_warning_is_one_line_with_the_fix(monkeypatch, caplog):
    from autocritic import versions

    monkeypatch.setattr(versions, "version_problems", lambda *args: ["transformers 9.0 is installed, autocritic is tested with <5.26"])
    with caplog.at_level(logging.WARNING, logger="autocritic"):
        assert check_versions()
    [record] = [r for r in caplog.records if "transformers 9.0" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and "pip install -c constraints.txt" in message


def test_a_release_other_than_the_documented_builds_is_named_and_a_local_build_tag_is_not_a_difference():
    installed = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "tokenizers": "0.23.3", "unnamed": "1.0"}
    documented = {"torch": "2.13.0", "transformers": "5.24.0", "tokenizers": "0.23.3"}
    assert other_releases(installed, documented) == ["transformers 5.25.0 (the documented build: 5.24.0)"]


def test_the_documented_build_is_the_locks():
    lock = locked_versions(REPO / "constraints.txt")
    assert {name: lock[name] for name in DOCUMENTED_BUILD} == DOCUMENTED_BUILD


def test_this_environment_is_inside_the_tested_ranges():
    assert check_versions() == []


def test_the_lock_pins_every_dependency_inside_its_bound():
    """constraints.txt is what CI installs: each package pyproject.toml names must be pinned there, inside its bound."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = locked_versions(REPO / "constraints.txt")
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        pinned = lock.get(normalise(requirement.name))
        assert pinned is not None, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(Version(pinned), prereleases=True), (requirement, pinned)
    assert Version(project["requires-python"].removeprefix(">=")) <= Version("3.11")


def test_importing_autocritic_outside_the_range_warns_instead_of_failing(tmp_path):
    """A fake `transformers` 9.0 metadata ahead on the path: the import still works and says what is wrong."""
    dist = tmp_path / "transformers-9.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 9.0.0\n")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import autocritic"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "transformers 9.0.0" in line]
    assert len(lines) == 1 and "tested with" in lines[0] and "Traceback" not in result.stderr
