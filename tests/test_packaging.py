"""The package installs on its own: the wheel carries every Hydra config, the license and the console scripts, and
`autocritic-train` / `autocritic-evaluate` compose their configs from the installed package, from any directory."""

from __future__ import annotations

import configparser
import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_CONF = REPO / "src" / "autocritic" / "conf"
SCRIPTS = {
    "autocritic-train": "autocritic.cli:train",
    "autocritic-evaluate": "autocritic.cli:evaluate",
    "autocritic-push": "autocritic.cli:push",
}


def config_files() -> set[str]:
    return {f"autocritic/conf/{p.relative_to(PACKAGE_CONF).as_posix()}" for p in PACKAGE_CONF.rglob("*.yaml")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source (the build writes build/ and *.egg-info where it runs)."""
    pytest.importorskip("setuptools", minversion="77")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    [built] = out.glob("autocritic-*.whl")
    return built


def test_top_level_conf_is_the_package_configs():
    """One source of truth: editing conf/ edits what the console scripts read."""
    assert (REPO / "conf").resolve() == PACKAGE_CONF.resolve()
    assert {"train.yaml", "evaluate.yaml"} <= {p.name for p in PACKAGE_CONF.glob("*.yaml")}


@pytest.mark.slow  # builds a wheel: a few seconds
def test_wheel_holds_every_config_the_license_and_the_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = config_files()
    assert {"autocritic/conf/train.yaml", "autocritic/conf/evaluate.yaml"} <= expected
    assert any(name.startswith("autocritic/conf/phase/") for name in expected)  # the groups were found
    assert expected - names == set()
    assert "autocritic/conf/__init__.py" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == SCRIPTS


@pytest.mark.parametrize("target", SCRIPTS.values())
def test_console_script_targets_are_callable(target):
    module, name = target.split(":")
    assert callable(getattr(importlib.import_module(module), name))


def run_installed(unpacked: Path, cwd: Path, function: str, *args: str) -> subprocess.CompletedProcess:
    """`autocritic-<function>` as the installed wheel runs it: the unpacked wheel first on the path, outside the repo."""
    code = (
        "import sys, autocritic, autocritic.cli\n"
        f"assert autocritic.__file__.startswith({str(unpacked)!r}), autocritic.__file__\n"
        f"sys.argv[0] = 'autocritic-{function}'\n"
        f"autocritic.cli.{function}()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # builds a wheel and starts Python twice: a few seconds
def test_installed_scripts_compose_their_configs_outside_the_repo(wheel, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)  # a pure-Python wheel unpacked is its installed layout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # seed=None is what a wandb sweep agent renders for null: the console script cleans it like train.py does.
    train = run_installed(unpacked, elsewhere, "train", "--cfg", "job", "phase=finetune", "seed=None")
    assert train.returncode == 0, train.stderr
    assert "name: finetune" in train.stdout and "seed: null" in train.stdout

    evaluate = run_installed(unpacked, elsewhere, "evaluate", "--cfg", "hydra")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "dir: ${new_dir:${paths.outputs}/evaluate/" in evaluate.stdout  # relative: lands in the user's directory
    assert "path: autocritic.conf\n      schema: pkg\n      provider: main" in evaluate.stdout
    assert "name: evaluate" in evaluate.stdout
