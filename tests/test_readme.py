"""The README's Python example runs as written, on an export."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_example_runs_on_an_export(tiny_export, capsys):
    [block] = python_blocks((ROOT / "README.md").read_text())
    assert "outputs/finetune/<run>/export" in block
    code = block.replace("outputs/finetune/<run>/export", str(tiny_export))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert capsys.readouterr().out  # the chosen answer and the streamed reply were printed
