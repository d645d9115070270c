"""`evaluate.py device=... dtype=...`: auto takes the GPU in bfloat16 when CUDA is there, else the CPU in float32;
wrong names, and cuda without CUDA, are one clear error before anything is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluation import TINY_SIZES, compose_eval, tiny_export  # noqa: F401 (tiny_export is a fixture)

from autocritic.errors import ConfigError
from autocritic.evaluation import run
from autocritic.evaluation.run import evaluate, resolve_device


@pytest.mark.parametrize(
    "cuda, device, dtype, expected",
    [
        (False, "auto", "auto", ("cpu", "float32")),
        (True, "auto", "auto", ("cuda", "bfloat16")),
        (True, "auto", "float16", ("cuda", "float16")),
        (True, "cpu", "auto", ("cpu", "float32")),
        (True, "cuda", "float32", ("cuda", "float32")),
        (False, "cpu", "bfloat16", ("cpu", "bfloat16")),
    ],
)
def test_auto_resolves_to_the_gpu_in_bfloat16_only_when_cuda_is_there(monkeypatch, cuda, device, dtype, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device(device, dtype) == expected


@pytest.mark.parametrize(
    "override, message",
    [
        ("device=tpu", "device='tpu' is not one of cpu, cuda, auto"),
        ("dtype=float8", "dtype='float8' is not one of float32, bfloat16, float16, auto"),
        ("device=cuda", "device=cuda but torch .* sees no CUDA device: use device=cpu or device=auto"),
    ],
)
def test_a_wrong_device_fails_before_loading(monkeypatch, tmp_path, override, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_eval([f"ckpt={tmp_path / 'not-loaded'}", override])  # a missing export would be another error
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)


def test_the_export_is_loaded_on_the_resolved_device(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = {}

    def from_export(path, batch_size, **kwargs):
        asked.update(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(run.CriticGenerator, "from_export", from_export)
    with pytest.raises(Exception, match="stop here"):
        run.load_generator(tmp_path, compose_eval(["device=auto", "dtype=auto"]))
    assert asked == {"device": "cuda", "dtype": "bfloat16"}


@pytest.mark.slow  # a tiny export is trained, then two suites run
def test_suites_run_in_bfloat16(tiny_export, tmp_path):  # noqa: F811
    """What device=auto picks on a GPU, run on the CPU: the suites read bfloat16 scores and states."""
    run_dir = tmp_path / "run"
    cfg = compose_eval(
        [f"ckpt={tiny_export}", f"paths.run_dir={run_dir}", *TINY_SIZES, "suites=[prompts,rerank]", "dtype=bfloat16"]
    )
    evaluate(cfg)
    meta = json.loads((run_dir / "results.json").read_text())["meta"]
    assert meta["device"] == "cpu" and meta["dtype"] == "bfloat16"
