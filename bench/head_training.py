"""The checker's training (cached features -> exported head): the preset it replaced against today's default.

Each side runs `python train.py phase=transfer` on the offline default in a process of its own (after an untimed
one-epoch run that computes its feature cache), then the rerank suite on the same held-out problems:
- "preset": the checker as `experiment=offline-checker` trained it until 2026-12-04: PyTorch's `nn.TransformerEncoder`
  layers (read at the last slot), a window of 24 states, feed-forward 256, attention dropout 0.1, batch 128,
  learning rate 1e-3 over 48 epochs with 2000 warmup steps;
- "default": `head: checker` with `recipe/offline_transfer.yaml` (window 16, feed-forward 128, no attention dropout;
  Bradley–Terry on the critic data's answer pairs, batch 256 pairs, learning rate 6e-3 over 18 epochs) on
  `autocritic.model.window` layers.
Both sides read the offline default's critic data, the preset every answer under the log loss: since it holds the
answers to 24,000 problems (114k–143k rows by the backbone, 2.3–2.8 times the 50k the preset was tuned on), the
preset's 48 epochs take about 100 minutes on 2 CPU cores.
Prints each side's training seconds (fit and test), their ratio, the test within-problem AUROC and the share of the
greedy -> pass@8 gap that best-of-8 closes.

    python bench/head_training.py [--problems 1000] [--quick] [hydra overrides, e.g. seed=1]

`--quick` trains two epochs a side and compares seconds per epoch only (minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from common import compose_config, prepared_data
from hydra import compose, initialize_config_dir
from torch import nn

from autocritic.evaluation.run import evaluate
from autocritic.model import head as head_module
from autocritic.training import run as training

CONF = str(Path(__file__).resolve().parents[1] / "conf")
PRESET = [
    "head.window=24", "head.feedforward=256", "head.attention_dropout=0.1", "data.batch_size=128", "phase.lr=1e-3",
    "phase.max_epochs=48", "phase.warmup_steps=2000", "objective.calibrate=false",
    "data.train_files=[${paths.offline}/critic/train.jsonl]", "data.train_schema=null", "objective.kind=bce",
]


class PyTorchEncoder(nn.Module):
    """`nn.TransformerEncoder` (pre-norm) read at the last slot, with the interface of `WindowEncoder`: the preset's."""

    def __init__(self, width, heads, feedforward, dropout, attention_dropout, layers):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, feedforward, dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).layers

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        padding = None if keep is None else ~keep
        *below, top = self.layers
        for layer in below:
            x = layer(x, src_key_padding_mask=padding)
        y = top.norm1(x)  # the top layer at the last slot only
        attended = top.self_attn(y[:, -1:], y, y, key_padding_mask=padding, need_weights=False)[0]
        h = x[:, -1:] + top.dropout1(attended)
        h = h + top.dropout2(top.linear2(top.dropout(top.activation(top.linear1(top.norm2(h))))))
        return h[:, 0]


class Clock(L.Callback):
    """Seconds of each training epoch, and of fit + test together."""

    def __init__(self):
        self.epochs: list[float] = []
        self.started = self.ended = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(time.perf_counter() - self.epoch_started)

    def on_test_end(self, trainer, pl_module):
        self.ended = time.perf_counter()


def train_side(overrides: list[str], encoder: type, out: Path) -> tuple[Clock, dict, Path]:
    clock = Clock()
    original_build, original_encoder = training.build_trainer, head_module.WindowEncoder

    def build_trainer(cfg, run_dir, callbacks=None, *rest, **named):
        return original_build(cfg, run_dir, [*(callbacks or []), clock], *rest, **named)

    head_module.WindowEncoder, training.build_trainer = encoder, build_trainer
    try:
        cfg = compose_config([*overrides, f"paths.outputs={out}", f"paths.run_dir={out}/run"])
        training.train(cfg)
    finally:
        head_module.WindowEncoder, training.build_trainer = original_encoder, original_build
    return clock, json.loads((out / "run" / "metrics.json").read_text()), out / "run" / "export"


def gap_closed(export: Path, problems: int, out: Path) -> float:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt={export}", "suites=[rerank]", f"rerank.n_problems={problems}", f"paths.run_dir={out}/evaluate",
        ])
    evaluate(cfg)
    return json.loads((out / "evaluate" / "results.json").read_text())["suites"]["rerank"]["figures"]["gap"]["closed"]


def run_side(name: str, overrides: list[str], encoder: type, problems: int, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as root:  # untimed first: computes the side's feature cache if missing
        train_side([*overrides, "phase.max_epochs=1"], encoder, Path(root) / "warm")
        clock, metrics, export = train_side(overrides, encoder, Path(root) / name)
        result = {
            "seconds": clock.ended - clock.started,
            "per_epoch": statistics.median(clock.epochs[1:] or clock.epochs),
            "epochs": len(clock.epochs),
            "within": metrics.get("test/within_auroc"),
        }
        if not quick:
            result["gap"] = gap_closed(export, problems, Path(root) / name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--side", choices=["preset", "default"], help="run one side here (the parent runs each)")
    args, extra = parser.parse_known_args()
    torch.set_num_threads(2)
    common = ["phase=transfer", "logger=none", "progress_bar=none", *extra]
    sides = {"preset": ([*common, *PRESET], PyTorchEncoder), "default": (common, head_module.WindowEncoder)}
    if args.quick:
        sides = {name: ([*o, "phase.max_epochs=2"], e) for name, (o, e) in sides.items()}
    if args.side:
        result = run_side(args.side, *sides[args.side], args.problems, args.quick)
        print(f"RESULT {json.dumps(result)}", flush=True)
        return
    prepared_data(compose_config(common))  # the offline default, built if missing
    results = {}
    for name in sides:  # each side in a process of its own: nothing one leaves behind slows the other
        command = [sys.executable, __file__, "--side", name, f"--problems={args.problems}", *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"the {name} side failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        results[name] = json.loads(lines[-1].removeprefix("RESULT "))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    preset, default = results["preset"], results["default"]
    if args.quick:
        print(
            f"seconds per epoch: {preset['per_epoch']:.1f} vs {default['per_epoch']:.1f}: "
            f"{preset['per_epoch'] / default['per_epoch']:.2f}x"
        )
        return
    print(
        f"training (fit and test): {preset['seconds']:.0f} s vs {default['seconds']:.0f} s: "
        f"{preset['seconds'] / default['seconds']:.2f}x faster; test within-problem AUROC {preset['within']:.3f} vs "
        f"{default['within']:.3f}; best-of-8 gap closed on {args.problems} problems {preset['gap']:+.1%} vs "
        f"{default['gap']:+.1%}"
    )


if __name__ == "__main__":
    main()
