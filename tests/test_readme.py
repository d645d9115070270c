"""The README's Python example runs as written, on an export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_example_runs_on_an_export(tiny_export, capsys):
    [block] = python_blocks((ROOT / "README.md").read_text())
    assert "outputs/finetune/<run>/export" in block
    code = block.replace("outputs/finetune/<run>/export", str(tiny_export))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert capsys.readouterr().out  # the chosen answer and the streamed reply were printed


def test_loading_an_adapter_does_not_print_bitsandbytes_kernel_notices():
    import subprocess
    import sys

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    if "kernels-community" not in stderr_of("import peft"):
        pytest.skip("this machine's bitsandbytes says nothing at import (no AVX512-BF16 CPU, or no bitsandbytes)")
    quiet = stderr_of(
        "from autocritic.model.adapter import bitsandbytes_quiet\nwith bitsandbytes_quiet():\n    import peft"
    )
    assert "kernels-community" not in quiet
