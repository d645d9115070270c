"""Training through the real configs (conf/train.yaml composed with Hydra, shrunk to the tiny Falcon).

What trains is checked on parameter snapshots taken right after the critic is built and on the critic handed to
the export; the exports are reloaded with `load_critic`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from helpers import CONF_DIR, TEXTS, compose_train, scores, snapshot, tiny_overrides
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from autocritic.inference.generation import CriticGenerator
from autocritic.model.backbone import load_backbone, load_tokenizer, unwrap
from autocritic.model.critic import CriticModel, feature_width
from autocritic.model.export import HEAD_NAME, head_state, load_critic, read_critic_config
from autocritic.model.head import CriticHead, HeadSettings
from autocritic.training import feature_cache, module, run
from autocritic.training.calibration import last_linears
from autocritic.training.config_check import PHASES, check_config
from autocritic.training.module import NonFiniteLossError
from autocritic.training.objectives import ObjectiveSettings

TOL = 1e-5
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture
def capture(monkeypatch) -> dict:
    """The critic as built (a parameter snapshot, before any step) and as handed to the export (trained)."""
    seen: dict = {}
    build, save = run.build_critic, run.save_critic

    def build_spy(cfg, start):
        critic, settings = build(cfg, start)
        seen["before"], seen["start"] = snapshot(critic), start
        return critic, settings

    def save_spy(model, *args, **kwargs):
        seen["trained"] = model
        return save(model, *args, **kwargs)

    monkeypatch.setattr(run, "build_critic", build_spy)
    monkeypatch.setattr(run, "save_critic", save_spy)
    return seen


def train(backbone: Path, data: dict, root: Path, name: str, *overrides: str) -> Path:
    """One run of `python train.py` in-process; returns its run dir (<root>/outputs/<phase>/<name>)."""
    cfg = compose_train([*tiny_overrides(backbone, data, root, name), *overrides])
    run.train(cfg)
    return Path(cfg.paths.run_dir)


@pytest.fixture(scope="module")
def transfer_root(tiny_backbone, tiny_data, tmp_path_factory) -> Path:
    """paths.outputs root holding one finished transfer run, for the finetune runs to start from."""
    root = tmp_path_factory.mktemp("transfer_root")
    train(tiny_backbone, tiny_data, root, "first", "phase.max_epochs=1")
    return root


def assert_export_scores_like(trained: torch.nn.Module, export: Path, merge: bool = True) -> None:
    loaded = load_critic(export, merge=merge)
    tokenizer = load_tokenizer(str(export))
    assert (
        scores(loaded.model, loaded.tokenizer, TEXTS) - scores(trained, tokenizer, TEXTS)
    ).abs().max() <= TOL


# A small window head; conf/head/attention.yaml reads token ids.
WINDOW = ("head=attention", "head.window=6", "head.hidden_dim=16")


# ---- the three phases ----
def test_transfer_trains_the_head_only(tiny_backbone, tiny_data, tmp_path, capture):
    run_dir = train(tiny_backbone, tiny_data, tmp_path, "t", "trainer.fast_dev_run=true")
    trained = capture["trained"]
    assert capture["start"] is None
    on_disk = AutoModelForCausalLM.from_pretrained(tiny_backbone).state_dict()
    for name, p in trained.backbone.named_parameters():
        assert torch.equal(p.detach(), on_disk[name]), name
        assert torch.equal(capture["before"][f"backbone.{name}"], p.detach()), name
        assert not p.requires_grad
    for name, p in trained.head.named_parameters():
        assert not torch.equal(capture["before"][f"head.{name}"], p.detach()), f"head.{name} did not train"
    export = run_dir / "export"
    config = read_critic_config(export)
    assert config["backbone"] | {"name_or_path": None} == {
        "name_or_path": None, "local": True, "absolute_path": str(tiny_backbone.resolve()), "mode": "frozen"
    }
    assert (export / config["backbone"]["name_or_path"]).resolve() == tiny_backbone.resolve()  # relative to the export
    assert config["phase"] == "transfer" and config["test_metrics"]
    card = (export / "README.md").read_text()
    assert "transfer" in card and config["data"]["train_files"][0]["sha256"] in card and "test/auroc" in card
    assert (run_dir / "metrics.json").is_file()
    assert_export_scores_like(trained, export)


def test_finetune_lora_finds_the_transfer_export(tiny_backbone, tiny_data, transfer_root, capture):
    run_dir = train(
        tiny_backbone, tiny_data, transfer_root, "lora", "phase=finetune", "trainer.fast_dev_run=true"
    )
    transfer_export = transfer_root / "outputs" / "transfer" / "first" / "export"
    assert capture["start"] == transfer_export
    before, trained = capture["before"], capture["trained"]
    # The head starts from the transfer head.
    start_head = load_file(str(transfer_export / HEAD_NAME))
    for key, value in start_head.items():
        assert torch.equal(before[f"base_model.model.head.{key}"], value)

    after = dict(trained.named_parameters())
    lora = [n for n in after if "lora_" in n]
    head = [n for n in after if n.startswith("base_model.model.head.")]
    base = [n for n in after if n not in lora and n not in head]
    assert lora and head and base
    for name in base:  # the base model, lm_head included
        assert torch.equal(before[name], after[name].detach()), name
        assert not after[name].requires_grad
    for name in head + [
        n for n in lora if "lora_B" in n
    ]:  # lora_A's first gradient is 0 (lora_B starts at 0)
        assert not torch.equal(before[name], after[name].detach()), f"{name} did not train"

    export = run_dir / "export"
    config = read_critic_config(export)
    assert config["backbone"]["mode"] == "lora" and config["started_from"] == str(transfer_export)
    for merge in (True, False):
        assert_export_scores_like(trained, export, merge=merge)


@pytest.mark.parametrize("members", [1, 2])
def test_finetune_lora_from_a_head_reading_token_ids(tiny_backbone, tiny_data, tmp_path, capture, members):
    """The checker's path (the default head on the offline default, then `phase=finetune`): the head's own token embedding
    (each member's) starts from the transfer export, trains beside LoRA, and the export scores like the trained
    model."""
    transfer = train(
        tiny_backbone, tiny_data, tmp_path, "checker", "phase.max_epochs=1", *WINDOW, f"head.members={members}"
    ) / "export"
    assert read_critic_config(transfer)["head"]["tokens"] is True
    assert read_critic_config(transfer)["head"]["members"] == members
    run_dir = train(
        tiny_backbone, tiny_data, tmp_path, "lora", "phase=finetune", f"ckpt={transfer}", "trainer.fast_dev_run=true"
    )
    before, trained = capture["before"], capture["trained"]
    name = "embed.weight" if members == 1 else "members.1.embed.weight"
    embedding = f"base_model.model.head.{name}"
    assert torch.equal(before[embedding], load_file(str(transfer / HEAD_NAME))[name])
    assert not torch.equal(before[embedding], dict(trained.named_parameters())[embedding].detach())
    for merge in (True, False):
        assert_export_scores_like(trained, run_dir / "export", merge=merge)


def test_finetune_full_from_ckpt(tiny_backbone, tiny_data, transfer_root, tmp_path, capture):
    transfer_export = transfer_root / "outputs" / "transfer" / "first" / "export"
    run_dir = train(
        tiny_backbone,
        tiny_data,
        tmp_path,
        "full",
        "phase=finetune",
        "peft=none",
        f"ckpt={transfer_export}",
        "trainer.fast_dev_run=true",
    )
    assert capture["start"] == transfer_export
    before, trained = capture["before"], capture["trained"]
    assert all(
        torch.equal(before[f"head.{k}"], v) for k, v in load_file(str(transfer_export / HEAD_NAME)).items()
    )
    layers = {n: p for n, p in trained.named_parameters() if ".h." in n}  # every decoder block weight
    assert layers
    for name, p in layers.items():
        assert p.requires_grad
        assert not torch.equal(before[name], p.detach()), f"{name} did not train"
    assert trained.backbone.training  # dropout on while fine-tuning, not left in from_pretrained's eval mode
    assert read_critic_config(run_dir / "export")["backbone"]["mode"] == "full"
    assert_export_scores_like(trained, run_dir / "export")


def test_export_scores_like_the_trained_module_after_real_epochs(tiny_backbone, tiny_data, transfer_root):
    export = transfer_root / "outputs" / "transfer" / "first" / "export"
    metrics = json.loads((export.parent / "metrics.json").read_text())
    assert {"test/loss", "test/auroc", "test/accuracy", "test/ece", "test/brier"} <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values())
    # The export's head is the best checkpoint's head, which the test metrics were computed with, with the
    # calibration (objective.calibrate, on by default) folded into its output layer: score -> scale * score + offset.
    best = torch.load(export.parent / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    exported = load_file(str(export / HEAD_NAME))
    head = CriticHead(best["critic.head.net.0.weight"].shape[1], HeadSettings(kind="mlp", hidden_dim=16))
    output_layer = next(n for n, m in head.named_modules() if m is last_linears(head)[0])  # "net.3" of the mlp head
    weight, bias = f"{output_layer}.weight", f"{output_layer}.bias"
    for k, v in exported.items():
        if k not in (weight, bias):
            assert torch.equal(best[f"critic.head.{k}"], v), k
    raw = best[f"critic.head.{weight}"]
    scale = (exported[weight] * raw).sum() / (raw * raw).sum()  # the least-squares scale between the two
    assert scale > 0 and abs(scale - 1) > 1e-3  # a calibration was fitted and folded
    assert torch.allclose(exported[weight], scale * raw, rtol=1e-4, atol=1e-7)
    assert torch.isfinite(exported[bias]).all() and not torch.equal(exported[bias], best[f"critic.head.{bias}"])


# ---- feature cache ----
def test_feature_cache_is_reused_and_keyed(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    calls = []
    compute = feature_cache.compute_features
    monkeypatch.setattr(feature_cache, "compute_features", lambda *a: calls.append(a[2]) or compute(*a))
    cache = tmp_path / "cache"

    def files() -> dict[str, int]:  # a rewrite replaces the file (a new inode); a hit only marks it used
        return {f.name: f.stat().st_ino for f in cache.glob("*.safetensors")}

    train(tiny_backbone, tiny_data, tmp_path, "a", "trainer.fast_dev_run=true")
    first = files()
    assert len(first) == 1 and calls == ["train", "val"]
    train(tiny_backbone, tiny_data, tmp_path, "b", "trainer.fast_dev_run=true")
    assert files() == first and calls == ["train", "val"]  # a hit: nothing computed or rewritten
    train(
        tiny_backbone,
        tiny_data,
        tmp_path,
        "c",
        "trainer.fast_dev_run=true",
        "data.template='{prompt} {response}'",
    )
    assert len(files()) == 2 and len(calls) == 4
    train(tiny_backbone, tiny_data, tmp_path, "d", "trainer.fast_dev_run=true", "data.max_length=16")
    assert len(files()) == 3 and len(calls) == 6
    assert all(files()[name] == inode for name, inode in first.items())


def test_the_feature_cache_is_pruned_least_recently_used_first(tiny_backbone, tiny_data, tmp_path, caplog):
    cache = tmp_path / "cache"
    train(tiny_backbone, tiny_data, tmp_path, "a", "trainer.fast_dev_run=true")
    [first] = cache.glob("*.safetensors")
    size_gb = first.stat().st_size / 1e9
    template = "data.template='{prompt} {response}'"
    train(tiny_backbone, tiny_data, tmp_path, "b", "trainer.fast_dev_run=true", template)  # 20 GB: both kept
    assert len(list(cache.glob("*.safetensors"))) == 2
    os.utime(first, (first.stat().st_atime, first.stat().st_mtime - 100))  # the older file was used longer ago
    caplog.set_level("INFO", logger="autocritic")
    limit = f"paths.cache_max_gb={2.5 * size_gb}"  # room for two files of this size, not three
    train(tiny_backbone, tiny_data, tmp_path, "c", "trainer.fast_dev_run=true", "data.max_length=16", limit)
    kept = {f.name for f in cache.glob("*.safetensors")}
    assert len(kept) == 2 and first.name not in kept
    assert "removed 1 least recently used file(s)" in caplog.text


def test_prune_cache_never_removes_the_file_in_use(tmp_path):
    files = []
    for age, name in enumerate(("new", "mid", "old")):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 - age, 1000 - age))
        files.append(path)
    new, mid, old = files
    assert feature_cache.prune_cache(tmp_path, keep=old, max_bytes=150) == [mid, new]  # oldest of the others first
    assert old.is_file() and feature_cache.prune_cache(tmp_path, keep=old, max_bytes=10) == []


def test_feature_cache_does_not_change_the_result(tiny_backbone, tiny_data, tmp_path, capture):
    """A cache miss (features computed) and a hit give the same trained head: the cache uses no global RNG."""
    heads = []
    for name in ("miss", "hit"):
        train(tiny_backbone, tiny_data, tmp_path, name, "phase.max_epochs=1")
        heads.append(head_state(capture["trained"]))
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


@pytest.mark.parametrize(
    "head",
    [(), (*WINDOW, "head.tokens=false"), WINDOW, (*WINDOW, "head.members=2")],
    ids=["mlp", "window", "tokens", "members"],
)
def test_transfer_without_the_feature_cache_trains_the_same_head(tiny_backbone, tiny_data, tmp_path, capture, head):
    """phase.cache_features=false (for a model too big to hold whole on one device: the frozen forward runs every
    step instead) trains the head the cached run trains, given the same row order (cached batches are never
    grouped by length, so grouping is off on both sides). A window head's cache holds its last states and mask (and
    their token ids).
    Its attention's key biases get no gradient but rounding noise, which Adam scales up to steps of the learning
    rate: for it the two runs are compared by their scores, not their weights."""
    heads, cached_files, scores = [], [], []
    same_order = ("data.share_prompts=false", "data.group_by_length=false", *head)
    rows = [json.loads(line) for line in tiny_data["val"].read_text().splitlines()]
    for name, cache in (("cached", "true"), ("live", "false")):
        run_dir = train(
            tiny_backbone, tiny_data, tmp_path, name, "phase.max_epochs=1", f"phase.cache_features={cache}", *same_order
        )
        heads.append(head_state(capture["trained"]))
        cached_files.append(len(list((tmp_path / "cache").glob("*.safetensors"))))
        generator = CriticGenerator.from_export(run_dir / "export")
        scores.append(torch.tensor(generator.score_texts([r["prompt"] for r in rows], [r["response"] for r in rows])))
    assert cached_files[0] > 0 and cached_files[1] == cached_files[0]  # the live run wrote no features
    assert (scores[0] - scores[1]).abs().max() <= 1e-4
    assert scores[0].std() > 1e-2  # the rows are not scored alike: the comparison means something
    if not head:
        for k in heads[0]:
            assert (heads[0][k] - heads[1][k]).abs().max() <= TOL, k


def test_each_head_member_fits_the_labels_on_its_own(tiny_backbone):
    """The step's loss is the mean of each member's own loss, not the loss of the members' mean score."""
    settings = HeadSettings(kind="mlp", hidden_dim=8, confidence=True, members=2)
    critic = CriticModel(load_backbone(str(tiny_backbone)), head_settings=settings)
    trainer = module.CriticModule(critic, ObjectiveSettings(), module.OptimSettings(), backbone_frozen=True).eval()
    hidden = critic.backbone.config.hidden_size
    torch.manual_seed(0)
    features = torch.randn(8, feature_width(hidden, 1)) * 3
    target = torch.tensor([1.0, 0.0] * 4)
    loss = trainer.step({"features": features, "target": target}, "train")
    members = critic.score_features(features, members=True)
    each = [torch.nn.functional.binary_cross_entropy_with_logits(members[:, m], target) for m in range(2)]
    of_the_mean = torch.nn.functional.binary_cross_entropy_with_logits(members.mean(-1), target)
    assert loss.item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-6)
    assert abs(loss.item() - of_the_mean.item()) > 1e-3  # the two differ here: the check above means something


# ---- extra loss terms ----
@pytest.mark.parametrize(
    "override, logged",
    [("objective.lm_weight=0.5", "lm_loss"), ("objective.value_weight=1.0", "value_loss")],
    ids=["joint LM loss", "token-level values"],
)
def test_extra_loss_terms_in_finetune_are_logged(tiny_backbone, tiny_data, transfer_root, override, logged):
    run_dir = train(
        tiny_backbone,
        tiny_data,
        transfer_root,
        logged,
        "phase=finetune",
        override,
        "logger=csv",
        "phase.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
    )
    (metrics_file,) = run_dir.glob("csv/*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    train_values = [float(r[f"train/{logged}"]) for r in rows if r.get(f"train/{logged}")]
    assert len(train_values) == 3 and all(math.isfinite(v) and v > 0 for v in train_values)
    assert any(r.get(f"val/{logged}") for r in rows)


def test_train_returns_the_best_validation_metric(tiny_backbone, tiny_data, tmp_path):
    """What a sweep optimises: the monitored val/auroc of the best epoch, not a test figure."""
    cfg = compose_train(
        [*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "best"), "logger=csv", "phase.max_epochs=3"]
    )
    returned = run.train(cfg)
    (metrics_file,) = Path(cfg.paths.run_dir).glob("csv/*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    val = [float(r["val/auroc"]) for r in rows if r.get("val/auroc")]
    assert len(val) == 3
    assert returned == pytest.approx(max(val), abs=1e-6)


# ---- every preset composes ----
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_configs_compose(experiment, monkeypatch):
    # the GPU presets are checked as on the machine they are for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    cfg = compose_train([] if experiment is None else [f"experiment={experiment}"])
    assert cfg.phase.name in PHASES
    check_config(cfg)


@pytest.mark.parametrize("phase", ["transfer", "finetune"])
@pytest.mark.parametrize("objective", ["bce", "mse", "pairwise"])
def test_phase_and_objective_groups_compose(phase, objective):
    schema = {"bce": "pointwise", "mse": "scalar", "pairwise": "pairwise"}[objective]
    cfg = compose_train([f"phase={phase}", f"objective={objective}", "data=files", f"data.schema={schema}"])
    check_config(cfg)
    assert cfg.peft.mode == ("lora" if phase == "finetune" else "none")
    assert cfg.trainer.max_epochs == cfg.phase.max_epochs


# ---- resume ----
def last_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_last_ckpt_is_the_last_step_even_without_improvement(tiny_backbone, tiny_data, tmp_path):
    # Monitoring "epoch" in min mode: only the first epoch is ever the best.
    run_dir = train(
        tiny_backbone,
        tiny_data,
        tmp_path,
        "r",
        "phase.max_epochs=2",
        "objective.monitor=epoch",
        "objective.mode=min",
    )
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)["global_step"] == 8
    assert last_step(run_dir) == 16
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_continues_the_global_step(tiny_backbone, tiny_data, tmp_path):
    steps = ["checkpoint.every_n_train_steps=3"]
    first = train(tiny_backbone, tiny_data, tmp_path, "first", "phase.max_epochs=1", *steps)
    assert last_step(first) == 8  # 64 rows / batch 8
    ckpt = first / "checkpoints" / "last.ckpt"
    second = train(
        tiny_backbone, tiny_data, tmp_path, "second", "phase.max_epochs=2", f"resume={ckpt}", *steps
    )
    assert last_step(second) == 16
    auto = train(tiny_backbone, tiny_data, tmp_path, "third", "phase.max_epochs=3", "resume=auto", *steps)
    assert last_step(auto) == 24  # resume=auto picked the latest run's last.ckpt


def test_resumed_run_ends_like_an_uninterrupted_one(tiny_backbone, tiny_data, tmp_path, capture):
    whole = train(tiny_backbone, tiny_data, tmp_path, "whole", "phase.max_epochs=2")
    whole_head = head_state(capture["trained"])
    part = train(tiny_backbone, tiny_data, tmp_path, "part", "phase.max_epochs=1")
    resumed = train(
        tiny_backbone,
        tiny_data,
        tmp_path,
        "resumed",
        "phase.max_epochs=2",
        f"resume={part}/checkpoints/last.ckpt",
    )
    resumed_head = head_state(capture["trained"])
    assert all(
        torch.equal(whole_head[k], resumed_head[k]) for k in whole_head
    )  # same order, same dropout masks
    assert json.loads((whole / "metrics.json").read_text()) == json.loads(
        (resumed / "metrics.json").read_text()
    )


# ---- a loss that is not finite stops the run, the last good checkpoint survives ----
def test_nan_loss_stops_and_keeps_last_ckpt(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    calls = []
    loss = module.critic_loss

    def nan_at_sixth_step(settings, scores, target):
        calls.append(1)
        value = loss(settings, scores, target)
        return value * float("nan") if len(calls) == 6 else value

    monkeypatch.setattr(module, "critic_loss", nan_at_sixth_step)
    with pytest.raises(NonFiniteLossError, match="last.ckpt") as error:
        train(
            tiny_backbone,
            tiny_data,
            tmp_path,
            "nan",
            "phase.max_epochs=1",
            "checkpoint.every_n_train_steps=2",
        )
    assert "step 5" in str(error.value)
    last = tmp_path / "outputs" / "transfer" / "nan" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 4
    head = {k: v for k, v in checkpoint["state_dict"].items() if ".head." in k}
    assert head and all(torch.isfinite(v).all() for v in head.values())
    assert not (last.parent.parent / "export").exists()  # nothing exported from a failed run


def test_huge_learning_rate_is_caught(tiny_backbone, tiny_data, transfer_root, tmp_path):
    export = transfer_root / "outputs" / "transfer" / "first" / "export"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 1.*phase\.lr"):
        train(
            tiny_backbone,
            tiny_data,
            tmp_path,
            "huge",
            "phase=finetune",
            "peft=none",
            f"ckpt={export}",
            "phase.lr=1e6",
            "phase.warmup_steps=0",
            "phase.max_epochs=1",
        )


def test_trainable_parameters_are_all_in_the_optimizer(
    tiny_backbone, tiny_data, tmp_path, capture, monkeypatch
):
    seen = {}
    configure = module.CriticModule.configure_optimizers

    def spy(self):
        seen["optimizer"] = out = configure(self)
        seen["critic"] = self.critic
        return out

    monkeypatch.setattr(module.CriticModule, "configure_optimizers", spy)
    train(tiny_backbone, tiny_data, tmp_path, "opt", "trainer.fast_dev_run=true", "head=linear")
    in_optimizer = {id(p) for group in seen["optimizer"].param_groups for p in group["params"]}
    trainable = {id(p) for p in unwrap(seen["critic"]).parameters() if p.requires_grad}
    assert in_optimizer == trainable and len(trainable) == 2  # the linear head's weight and bias


@pytest.mark.parametrize(
    "schedule, expected",
    [("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]), ("cosine", [0.5, 1.0, 1.0, 0.8536, 0.5, 0.1464])],
)
def test_learning_rate_schedule_by_hand(schedule, expected):
    """phase.warmup_steps then phase.schedule: 2 warmup steps of 6, cosine to 0 at the end."""
    from types import SimpleNamespace

    from autocritic.training.objectives import ObjectiveSettings

    settings = module.OptimSettings(lr=1.0, warmup_steps=2, schedule=schedule)
    critic_module = module.CriticModule(torch.nn.Linear(2, 1), ObjectiveSettings(), settings, backbone_frozen=False)
    critic_module._trainer = SimpleNamespace(estimated_stepping_batches=6)
    configured = critic_module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(expected, abs=1e-4)
