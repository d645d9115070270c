"""The package's layers, read from the import statements: data flows one way (model → inference → evaluation,
data → training), and training and evaluation meet only through the export on disk. `improve` (phase=improve)
sits above them all: it drives training and evaluation in turn, each round handing over an export on disk, and
nothing but the entry point imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "autocritic"
FORBIDDEN = {
    "model": ("data", "inference", "training", "evaluation", "offline", "labelling", "formats", "settings", "tracking"),
    "inference": ("offline", "training", "evaluation", "labelling"),
    "training": ("evaluation", "inference"),
    "evaluation": ("training",),
    "data": ("inference", "training", "evaluation", "offline", "labelling"),
    "labelling": ("offline", "inference", "training", "evaluation"),  # your problems: nothing of the toy world
}


def imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "autocritic" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_a_layer_imports_nothing_downstream(layer):
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(imported_layers(path) & set(FORBIDDEN[layer]))
        for path in sorted((PACKAGE / layer).glob("*.py"))
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_only_the_entry_point_imports_the_improve_loop():
    importers = {
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "improve" in imported_layers(path) and path.parent.name != "improve"
    }
    assert importers == {"entry.py"}


def test_the_rule_sees_an_import():
    assert imported_layers(PACKAGE / "inference" / "chat.py") >= {"formats", "inference"}
