"""The offline build with pinned numerics (offline/pinned.py): a child process whose weights do not depend on the
thread count or the vector kernels of the process that starts it, whose errors and signals come back to that
process with the previous build intact, and which the pipeline starts only when a build is due."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import compose_train, tiny_pretrain_settings

from autocritic.errors import ConfigError
from autocritic.offline import pinned, pipeline
from autocritic.offline.generate import CARD, GenerateSettings, build_critic_data, critic_data_built
from autocritic.offline.pinned import NUMERICS, run_pinned, unpinnable
from autocritic.offline.pretrain import BUILD_INFO, build_backbone

pytestmark = pytest.mark.skipif(unpinnable() is not None, reason=str(unpinnable()))

# What another machine would change: fewer threads, PyTorch's kernels without AVX2, MKL's code path.
ANOTHER_MACHINE = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"
}
TESTS = Path(__file__).parent


def weights_md5(backbone: Path) -> str:
    return hashlib.md5((backbone / "model.safetensors").read_bytes()).hexdigest()


def build_natively(out: Path, settings, env: dict[str, str]) -> None:
    """The same build in a plain child process, with the machine's own numerics under `env`."""
    script = f"""
        import dataclasses, sys
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import tiny_pretrain_settings
        from autocritic.offline.pretrain import build_backbone
        build_backbone(tiny_pretrain_settings(**{settings!r}), {str(out)!r}, progress=False)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env={**os.environ, **env}, check=True)


def test_the_build_is_the_same_whatever_threads_and_kernels_the_caller_runs_with(tmp_path, monkeypatch):
    settings = tiny_pretrain_settings(max_steps=30)
    pinned_md5 = {}
    for name, env in {"this": {}, "another": ANOTHER_MACHINE}.items():
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            run_pinned(
                "backbone", settings=dataclasses.asdict(settings), out_dir=str(tmp_path / name), force=False,
                progress=False,
            )
        pinned_md5[name] = weights_md5(tmp_path / name)
    assert pinned_md5["this"] == pinned_md5["another"]
    info = json.loads((tmp_path / "this" / BUILD_INFO).read_text())
    assert info["numerics"] == NUMERICS and info["torch_threads"] == 2

    # Without the pinning, the other machine's settings train other weights: what the child protects against.
    build_natively(tmp_path / "native", {"max_steps": 30}, ANOTHER_MACHINE)
    assert weights_md5(tmp_path / "native") != pinned_md5["this"]


def test_the_critic_data_are_sampled_in_the_child_as_in_this_process(tmp_path):
    backbone = build_backbone(tiny_pretrain_settings(max_steps=10), tmp_path / "backbone", progress=False)
    settings = GenerateSettings(train_problems=6, val_problems=3, test_problems=3, samples=4, batch_size=16)
    run_pinned(
        "critic", backbone_dir=str(backbone), settings=dataclasses.asdict(settings), out_dir=str(tmp_path / "child"),
        force=False, progress=False,
    )
    assert critic_data_built(backbone, settings, tmp_path / "child")  # the pipeline's skip check agrees
    card = json.loads((tmp_path / "child" / CARD).read_text())
    assert card["torch_threads"] == 2
    here = json.loads((build_critic_data(backbone, settings, tmp_path / "here", progress=False) / CARD).read_text())
    for split in ("train", "val", "test"):  # the same problems, each sampled as often (the samples follow the numerics)
        for count in ("problems", "generated"):
            assert card["splits"][split][count] == here["splits"][split][count]


def test_an_error_in_the_child_comes_back_as_the_same_error_and_the_previous_build_stays(tmp_path):
    out = tmp_path / "backbone"
    out.mkdir()
    (out / "model.safetensors").write_text("the previous build")
    too_slow = tiny_pretrain_settings(max_steps=500, max_minutes=0.001)  # the cap is checked at step 500
    with pytest.raises(ConfigError, match=r"offline.pretrain.max_minutes=0.001"):
        run_pinned("backbone", settings=dataclasses.asdict(too_slow), out_dir=str(out), force=True, progress=False)
    assert (out / "model.safetensors").read_text() == "the previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_caller_stops_the_child_and_keeps_the_previous_build(tmp_path, signum):
    out = tmp_path / "backbone"
    out.mkdir()
    (out / "model.safetensors").write_text("the previous build")
    # Ctrl+C as a terminal delivers it: a test run started in the background inherits SIGINT ignored.
    caller = f"""
        import dataclasses, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import tiny_pretrain_settings
        from autocritic.errors import Interrupted
        from autocritic.offline.pinned import run_pinned
        endless = dataclasses.asdict(tiny_pretrain_settings(max_steps=10**6))
        print("started", flush=True)
        try:
            run_pinned("backbone", settings=endless, out_dir={str(out)!r}, force=True, progress=False)
        except Interrupted as error:
            print(error)
            sys.exit(error.exit_code)
    """
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(caller)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout.readline().strip() == "started"
    time.sleep(8)  # the child is importing or training: either way it must stop cleanly
    process.send_signal(signum)
    said, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, said
    assert f"stopped by {signal.Signals(signum).name}" in said and f"{out} is as it was" in said
    assert (out / "model.safetensors").read_text() == "the previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone"]


TINY_OFFLINE = ["progress_bar=none"] + [
    f"offline.pretrain.{key}={value}"
    for key, value in dataclasses.asdict(tiny_pretrain_settings(max_steps=3)).items()
    if key not in ("mix", "max_minutes")
]


def test_the_pipeline_starts_a_child_only_when_a_build_is_due(tmp_path, monkeypatch):
    cfg = compose_train([f"paths.offline={tmp_path}", *TINY_OFFLINE])
    settings = tiny_pretrain_settings(max_steps=3)
    started = []
    monkeypatch.setattr(pipeline, "run_pinned", lambda step, **arguments: started.append(step))

    build_backbone(settings, tmp_path / "backbone", progress=False, numerics=NUMERICS)
    pipeline.ensure_backbone(cfg, force=False)
    assert started == []  # built under the pinned numerics: kept

    build_backbone(settings, tmp_path / "backbone", force=True, progress=False)
    pipeline.ensure_backbone(cfg, force=False)
    assert started == ["backbone"]  # built under this machine's own numerics: built again, pinned

    native = compose_train([f"paths.offline={tmp_path}", "offline.pinned=false", *TINY_OFFLINE])
    stamp = (tmp_path / "backbone" / "model.safetensors").stat().st_mtime_ns
    pipeline.ensure_backbone(native, force=False)
    assert started == ["backbone"] and (tmp_path / "backbone" / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_cpu_that_cannot_pin_builds_its_own_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "unpinnable", lambda: "the pinned numerics need AVX2, which this CPU lacks")
    monkeypatch.setattr(pipeline, "run_pinned", lambda *a, **k: pytest.fail("a child was started"))
    pipeline.warn_unpinned.cache_clear()
    caplog.set_level("WARNING", logger="autocritic")
    cfg = compose_train([f"paths.offline={tmp_path}", *TINY_OFFLINE])
    pipeline.ensure_backbone(cfg, force=False)
    info = json.loads((tmp_path / "backbone" / BUILD_INFO).read_text())
    assert info["numerics"] == "this machine's own"
    assert "lacks" in caplog.text and "another draw than the documented backbone" in caplog.text


def test_offline_pinned_must_be_true_or_false(tmp_path):
    cfg = compose_train([f"paths.offline={tmp_path}", "offline.pinned=maybe"])
    with pytest.raises(ConfigError, match=r"offline.pinned='maybe' is not valid: expected true or false"):
        pipeline.check_offline_settings(cfg)


def test_the_child_reports_what_stopped_it(tmp_path, monkeypatch):
    """The child's side of the protocol, in this process: an error of the user's kind, a signal, success."""
    request = tmp_path / "request.json"
    result = tmp_path / "result.json"
    request.write_text(json.dumps({"step": "backbone", "arguments": {"out_dir": "x"}, "result": str(result)}))

    def fails(error):
        def build(step, arguments):
            raise error

        return build

    monkeypatch.setattr(pinned, "build", fails(ConfigError("bad")))
    assert pinned.main(request) == 2
    assert json.loads(result.read_text()) == {"error": "bad", "kind": "ConfigError"}
    monkeypatch.setattr(pinned, "build", fails(KeyboardInterrupt()))
    assert pinned.main(request) == 130
    answer = json.loads(result.read_text())
    assert answer["kind"] == "Interrupted"
    assert answer["error"] == "stopped by SIGINT: x is as it was; run the same command again."
    monkeypatch.setattr(pinned, "build", lambda step, arguments: None)
    assert pinned.main(request) == 0 and json.loads(result.read_text()) == {"done": True}
