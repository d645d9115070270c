"""Scale and sweeps: trainer presets, wandb sweep arguments through Hydra, simulated DDP, Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch.strategies
import pytest
import torch
import torch.distributed.fsdp
import yaml
from helpers import compose_train, resolved, tiny_overrides
from safetensors.torch import load_file

from autocritic.data.datamodule import CriticDataModule
from autocritic.errors import ConfigError
from autocritic.model.backbone import load_tokenizer
from autocritic.training.feature_cache import compute_features
from autocritic.training.module import CriticModule, OptimSettings
from autocritic.training.objectives import ObjectiveSettings
from autocritic.training.run import build_critic, build_strategy, data_settings, gathered_critic, train
from autocritic.training.sweep_args import sanitize_override, sanitize_overrides

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "conf" / "sweep").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_trainer_preset_composes_and_builds_its_strategy(preset):
    cfg = compose_train([f"trainer={preset}"])
    spec = cfg.trainer.get("strategy")
    if preset == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            with pytest.raises(ConfigError, match="pip install deepspeed"):
                build_strategy(spec)
            return
    strategy = build_strategy(spec)
    if preset == "fsdp":
        from transformers.models.falcon.modeling_falcon import FalconDecoderLayer

        assert strategy.kwargs["auto_wrap_policy"]._module_classes == {FalconDecoderLayer}
        assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {
            FalconDecoderLayer
        }


def agent_arguments(spec: dict, pick: int) -> list[str]:
    """What a wandb agent passes: `key=str(value)` for one point of the search space (args_no_hyphens)."""
    args = []
    for key, param in spec["parameters"].items():
        if "value" in param:
            value = param["value"]
        elif "values" in param:
            value = param["values"][pick % len(param["values"])]
        else:
            value = param["min"]
        args.append(f"{key}={value}")
    return args


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.stem)
def test_sweep_specs_use_the_hydra_safe_command(sweep_file):
    spec = yaml.safe_load(sweep_file.read_text())
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    assert spec["program"] == "train.py"
    assert spec["metric"]["name"].startswith("val/")


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_point_composes(sweep_file):
    spec = yaml.safe_load(sweep_file.read_text())
    longest = max(len(p.get("values", [0])) for p in spec["parameters"].values())
    for pick in range(longest):
        args = sanitize_overrides(agent_arguments(spec, pick))
        cfg = compose_train(args)
        for key, param in spec["parameters"].items():
            if "." in key and "values" in param:
                raw = param["values"][pick % len(param["values"])]
                got = cfg
                for part in key.split("."):
                    got = got[part]
                expected = None if raw == "None" else raw
                assert (list(got) if isinstance(expected, list) else got) == expected, key


def test_sweep_traps_are_defused():
    assert sanitize_override("head.init_std=None") == "head.init_std=null"
    for choice in ("peft=none", "logger=none", "quantization=none"):  # group options named "none" stay
        assert sanitize_override(choice) == choice
    assert sanitize_override("_wandb={'runtime': 12}") is None
    assert sanitize_override("wandb_version=1") is None
    assert sanitize_override("paths={'outputs': 'outputs', 'cache': 'data/cache'}") is None
    assert (
        sanitize_override("data.template=Question: {prompt} {response}")
        == "data.template='Question: {prompt} {response}'"
    )
    assert (
        sanitize_override("data.template=it's {prompt}{response}")
        == 'data.template="it\'s {prompt}{response}"'
    )
    assert (
        sanitize_override("peft.target_modules=['query_key_value', 'dense']")
        == "peft.target_modules=['query_key_value', 'dense']"
    )
    assert sanitize_override("phase.lr=0.001") == "phase.lr=0.001"
    mix = "offline.replay.mix={summary:0.5,copy:0.5}"  # Hydra's dict syntax stays a dict
    assert sanitize_override(mix) == mix
    assert sanitize_override("data.template={prompt}{response}") == "data.template='{prompt}{response}'"
    assert sanitize_override("--help") == "--help"


def test_a_resumed_sweep_run_with_every_trap_trains(tiny_backbone, tiny_data, tmp_path):
    """The arguments of a preempted/resumed agent run: None, whitespace, _wandb, a whole group injected."""
    agent_args = [
        "phase=transfer",
        "phase.lr=0.01",
        "head=mlp",
        "head.init_std=None",
        "head.dropout=0.2",
        "_wandb={'runtime': 3, 'code_path': 'train.py'}",
        "wandb_version=1",
        "paths={'outputs': 'outputs', 'offline': 'data/offline'}",
        "data.template=Q {prompt}{response}",
    ]
    cfg = resolved(
        compose_train(
            tiny_overrides(tiny_backbone, tiny_data, tmp_path)
            + sanitize_overrides(agent_args)
            + ["trainer.fast_dev_run=true"]
        )
    )
    assert (
        cfg.head.init_std is None and cfg.head.kind == "mlp" and cfg.data.template == "Q {prompt}{response}"
    )
    train(cfg)
    export = Path(cfg.paths.run_dir) / "export" / "critic_config.json"
    assert export.is_file()


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_overrides(backbone: Path, data: dict[str, Path]) -> list[str]:
    """The tests' tiny overrides for a `train.py` subprocess: Hydra picks the run directory, logs go to CSV."""
    kept = [o for o in tiny_overrides(backbone, data, Path(".")) if not o.startswith(("paths.", "logger="))]
    return kept + ["logger=csv", "phase.max_epochs=2"]


@pytest.mark.slow
def test_simulated_ddp_on_cpu_writes_one_run(tiny_backbone, tiny_data, tmp_path):
    result = run_cli(
        cli_overrides(tiny_backbone, tiny_data)
        + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "transfer").iterdir())
    assert len(runs) == 1, runs  # one output directory per run, not per rank
    run = runs[0]
    assert (run / "export" / "critic_config.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran, in the same directory
    # The feature cache works under DDP: each rank computed half the rows, and the file holds them all, as one
    # process computes them.
    for rank, log in enumerate(["train.log", "train_ddp_process_1.log"]):
        assert f"train features: rank {rank} of 2 computed 32 of 64 sequences" in (run / log).read_text()
    (written,) = (tmp_path / "data" / "cache").glob("*.safetensors")
    features = load_file(str(written))
    cfg = resolved(compose_train(tiny_overrides(tiny_backbone, tiny_data, tmp_path)))
    datamodule = CriticDataModule(data_settings(cfg), load_tokenizer(str(tiny_backbone)))
    datamodule.setup()
    critic, _ = build_critic(cfg, None)
    for split in ("train", "val"):
        assert torch.allclose(features[split], compute_features(critic, datamodule, split, torch.device("cpu")), atol=1e-5)


@pytest.mark.slow
def test_simulated_ddp_finetune_with_shared_prompts_replay_and_uneven_evaluation(tiny_backbone, tmp_path):
    """Two gloo ranks: every loader is a BatchShard (tests/test_sharding.py), the layers are checkpointed (DDP's
    gradient hooks meet the shared prompt's recomputed keys); the run must not hang on the ranks' unequal
    evaluation batches and must export once."""
    from conftest import write_jsonl

    rows = [
        {"prompt": f"Q: {a}+{b}=? A:", "response": f" {a + b + k}", "label": int(k == 0)}
        for a in range(5)
        for b in range(4)
        for k in (0, 1, 2)
    ]  # 60 rows, 3 per prompt
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    # 35 rows, 3 batches of 16: one rank evaluates 2, the other 1 (Lightning's sampler would repeat a row).
    val_file = write_jsonl(tmp_path / "val.jsonl", rows[:35])
    replay = write_jsonl(tmp_path / "replay.jsonl", [{"text": f"Q: {a}+1=? A: {a + 1}"} for a in range(9)])
    data = {"train": train_file, "val": val_file}
    result = run_cli(
        cli_overrides(tiny_backbone, data)
        + ["phase=finetune", "phase.init_from=null", "data.share_prompts=true", f"data.replay_files=[{replay}]"]
        + ["model.gradient_checkpointing=true"]  # as the Falcon-7B/40B configs: the prompts' keys survive recompute
        + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = next((tmp_path / "outputs" / "finetune").iterdir())
    assert (run / "export" / "critic_config.json").is_file()
    steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert steps == 2 * 4  # 8 batches of 8 rows dealt to 2 ranks, for 2 epochs
    # The test AUROC gathered over the ranks is one process's AUROC of the export on the same 35 rows, once each.
    from autocritic.evaluation.metrics import auroc
    from autocritic.inference.generation import CriticGenerator

    scores = CriticGenerator.from_export(run / "export").score_texts([r["prompt"] for r in rows[:35]], [r["response"] for r in rows[:35]])
    tested = json.loads((run / "metrics.json").read_text())["test/auroc"]
    assert abs(auroc(scores, [r["label"] for r in rows[:35]]) - tested) < 1e-6


@pytest.mark.slow
def test_hydra_multirun_runs_each_job(tiny_backbone, tiny_data, tmp_path):
    result = run_cli(
        ["-m", *cli_overrides(tiny_backbone, tiny_data), "trainer.fast_dev_run=true", "phase.lr=0.001,0.01"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exports = list((tmp_path / "outputs" / "multirun").glob("*/*/export/critic_config.json"))
    assert len(exports) == 2


def test_quantized_full_finetuning_is_refused_before_compute(tiny_backbone, tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_backbone, tiny_data, tmp_path) + [
        "phase=finetune",
        "peft=none",
        "quantization=nf4",
    ]
    with pytest.raises(ConfigError, match="peft=lora"):
        train(resolved(compose_train(overrides)))


def test_gradient_checkpointing_reaches_every_decoder_layer(tiny_backbone, tiny_data, tmp_path, recwarn):
    from transformers.modeling_layers import GradientCheckpointingLayer

    overrides = tiny_overrides(tiny_backbone, tiny_data, tmp_path) + ["phase=finetune", "model.gradient_checkpointing=true"]
    critic, _ = build_critic(resolved(compose_train(overrides)), None)
    layers = [m for m in critic.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    assert not [w for w in recwarn if "gradient_checkpointing_enable" in str(w.message)]  # the deprecated name


def test_memory_levers_are_configuration():
    cfg = compose_train(
        [
            "phase=finetune",
            "phase.optimizer=adamw8bit",
            "model.gradient_checkpointing=true",
            "trainer.precision=bf16-mixed",
            "trainer.accumulate_grad_batches=4",
        ]
    )
    assert (
        cfg.phase.optimizer,
        cfg.model.gradient_checkpointing,
        cfg.trainer.precision,
        cfg.trainer.accumulate_grad_batches,
    ) == ("adamw8bit", True, "bf16-mixed", 4)


def test_gpu_check_script_runs_its_modes_on_a_tiny_model(tmp_path):
    """The prepared GPU check, shrunk to a CPU smoke run: every mode runs a step and reports throughput."""
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--tiny",
            "--device",
            "cpu",
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "1",
            "--modes",
            "frozen,lora,lora_ckpt,qlora,lora_shared,lora_ckpt_shared",
            "--answers",
            "2",
            "--answer-tokens",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    modes = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(modes) == {"frozen", "lora", "lora_ckpt", "qlora", "lora_shared", "lora_ckpt_shared"}
    assert all(r["tokens_per_s"] > 0 for r in modes.values())


def test_fsdp_clips_by_norm_through_its_root_module(monkeypatch):
    class Root:  # stands for the root FullyShardedDataParallel module Lightning wraps the LightningModule in
        def __init__(self):
            self.clipped = []

        def clip_grad_norm_(self, max_norm):
            self.clipped.append(max_norm)

    monkeypatch.setattr(torch.distributed.fsdp, "FullyShardedDataParallel", Root)
    module = CriticModule(torch.nn.Linear(2, 1), ObjectiveSettings(), OptimSettings(), backbone_frozen=False)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(model=Root()))
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert module.trainer.strategy.model.clipped == [1.0]


def test_fsdp_export_is_the_gathered_state_in_a_fresh_critic(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    cfg = resolved(compose_train(tiny_overrides(tiny_backbone, tiny_data, tmp_path) + ["phase=finetune"]))
    live, _ = build_critic(cfg, None)
    gathered = {f"critic.{k}": v + 1 if v.is_floating_point() else v for k, v in live.state_dict().items()}

    class Sharded:  # stands for Lightning's FSDPStrategy: only its gathered state dict counts
        def lightning_module_state_dict(self):
            return gathered

    monkeypatch.setattr(lightning.pytorch.strategies, "FSDPStrategy", Sharded)
    trainer = SimpleNamespace(strategy=Sharded(), is_global_zero=True)
    exported = gathered_critic(cfg, trainer, SimpleNamespace(critic=live), None)
    assert exported is not live
    assert all(torch.equal(v, gathered[f"critic.{k}"]) for k, v in exported.state_dict().items())
    trainer.is_global_zero = False
    assert gathered_critic(cfg, trainer, SimpleNamespace(critic=live), None) is None  # rank 0 alone exports


def test_head_training_bench_times_each_side_through_the_training_entry_point(tiny_backbone, tiny_data, tmp_path):
    """The head-training bench hooks `training.build_trainer` and swaps the window encoder: a change of either
    signature must fail here, not an hour into the bench."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import head_training
    finally:
        sys.path.remove(str(ROOT / "bench"))
    head = ["head=attention", "head.hidden_dim=8", "head.attention_heads=2", "head.window=4", "head.feedforward=16"]
    paths = ("paths.outputs", "paths.run_dir")  # the bench sets its own
    overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, tmp_path) if not o.startswith(paths)]
    built: list[type] = []

    class Spy(head_training.PyTorchEncoder):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(type(self))

    clock, metrics, export = head_training.train_side(
        [*overrides, *head, "phase=transfer", "phase.max_epochs=2"], Spy, tmp_path / "side"
    )
    assert len(clock.epochs) == 2 and clock.ended > clock.started
    assert built == [Spy] and (export / "critic_config.json").exists()
    assert "test/within_auroc" in metrics
