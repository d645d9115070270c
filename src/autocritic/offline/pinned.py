"""The offline build with pinned numerics: one seed gives one backbone and one set of critic data on every x86 CPU.

A build's weights follow the order of its floating-point sums, and that order depends on the machine three ways:
PyTorch splits its reductions by thread count, picks its vector kernels by the CPU (AVX2 or AVX-512), and MKL picks
the code path of its matrix products by the CPU. Two threads, PyTorch's AVX2 kernels and MKL's AVX2 path in strict
conditional numerical reproducibility fix all three. They are read when PyTorch loads, so the build runs in a child
process started with them:

    python -m autocritic.offline.pinned <request.json>     (what offline/pipeline.py starts)

A CPU that cannot run them (not x86, or without AVX2) builds with its own numerics, another draw, and says so.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from autocritic.errors import AutocriticError, ConfigError, DataError, Interrupted

log = logging.getLogger("autocritic")

PINNED_ENV = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
# What a pinned build records beside its settings (build_info.json): part of the backbone's fingerprint, so a
# build made with a machine's own numerics is built again once, and the critic data after it.
NUMERICS = "pinned: 2 threads, AVX2 kernels, MKL_CBWR=AVX2,STRICT"
ERRORS = {cls.__name__: cls for cls in (ConfigError, DataError, AutocriticError)}


def unpinnable() -> str | None:
    """Why this CPU cannot run the pinned numerics, or None when it can."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"the pinned numerics need an x86 CPU with AVX2, and this one is {platform.machine() or 'unknown'}"
    has_avx2 = getattr(torch.cpu, "_is_avx2_supported", None)
    if not (has_avx2() if has_avx2 else torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        return "the pinned numerics need AVX2, which this CPU lacks"
    return None


def in_pinned_process() -> bool:
    return all(os.environ.get(name) == value for name, value in PINNED_ENV.items())


def run_pinned(step: str, **arguments) -> None:
    """Runs one build step ("backbone" or "critic", arguments as `build` takes them) in a child process with the
    pinned numerics, and waits. Its errors come back as the same errors here; a signal that reaches this process
    is passed on, and the child's own message says what was kept."""
    with tempfile.TemporaryDirectory(prefix="autocritic-pinned-") as scratch:
        request, result = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request.write_text(json.dumps({"step": step, "arguments": arguments, "result": str(result)}))
        # Its own process group: a Ctrl+C reaches this process alone, which passes it on once.
        child = subprocess.Popen(
            [sys.executable, "-m", "autocritic.offline.pinned", str(request)],
            env={**os.environ, **PINNED_ENV},
            process_group=0 if os.name == "posix" else None,
        )
        status = wait_passing_signals(child)
        answer = json.loads(result.read_text()) if result.is_file() else None
    if answer is None and status < 0:  # killed before its own handlers were in place
        said = f"stopped by {signal.Signals(-status).name}: {arguments['out_dir']} is as it was"
        raise Interrupted(f"{said}; run the same command again.", 128 - status)
    if answer is None:
        raise RuntimeError(f"the offline build's child process ({step}) ended with status {status} and no answer")
    if "error" not in answer:
        return
    if answer["kind"] == "Interrupted":
        raise Interrupted(answer["error"], answer["exit_code"])
    raise ERRORS.get(answer["kind"], AutocriticError)(answer["error"])


def wait_passing_signals(child: subprocess.Popen) -> int:
    """The child's exit status; SIGTERM and SIGINT (Ctrl+C) sent to this process are passed on to it."""
    main = threading.current_thread() is threading.main_thread()

    def pass_on(signum, frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, pass_on) if main else None
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                pass_on(signal.SIGINT, None)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def build(step: str, arguments: dict) -> None:
    """One build step in this process, as `run_pinned` asks for it."""
    from autocritic.settings import settings_from

    if step == "backbone":
        from autocritic.offline.pretrain import PretrainSettings, build_backbone

        build_backbone(
            settings_from(PretrainSettings, arguments["settings"], "offline.pretrain"),
            Path(arguments["out_dir"]),
            force=arguments["force"],
            progress=arguments["progress"],
            numerics=NUMERICS,
        )
    elif step == "critic":
        from autocritic.offline.generate import GenerateSettings, build_critic_data

        build_critic_data(
            Path(arguments["backbone_dir"]),
            settings_from(GenerateSettings, arguments["settings"], "offline.generate"),
            Path(arguments["out_dir"]),
            force=arguments["force"],
            progress=arguments["progress"],
        )
    else:
        raise ValueError(f"unknown build step {step!r}")


def main(request_file: Path) -> int:
    from autocritic.entry import quiet_libraries
    from autocritic.signals import stop_with

    quiet_libraries()  # as the calling entry point is
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    request = json.loads(request_file.read_text())
    result = Path(request["result"])
    try:
        out = request["arguments"]["out_dir"]
        with stop_with(lambda name: f"stopped by {name}: {out} is as it was; run the same command again."):
            build(request["step"], request["arguments"])
    except Interrupted as error:
        result.write_text(json.dumps({"error": str(error), "kind": "Interrupted", "exit_code": error.exit_code}))
        return error.exit_code
    except AutocriticError as error:
        kind = next(name for name, cls in ERRORS.items() if isinstance(error, cls))
        result.write_text(json.dumps({"error": str(error), "kind": kind}))
        return 2
    result.write_text(json.dumps({"done": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
