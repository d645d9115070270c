"""The export as a Hugging Face citizen: a plain PEFT adapter, a portable backbone reference, a model card, a merged
backbone, a sequence-classification copy, and the hub round trip (the hub itself monkeypatched: no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TEXTS, compose_train, scores, tiny_overrides
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from autocritic.errors import CheckpointError
from autocritic.inference.generation import CriticGenerator
from autocritic.model import hub
from autocritic.model.backbone import LoraSettings, apply_lora, load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel
from autocritic.model.export import (
    CONFIG_NAME,
    LoadedCritic,
    device_and_dtype,
    head_state,
    load_critic,
    read_critic_config,
    save_critic,
)
from autocritic.model.head import HeadSettings
from autocritic.model.reference import backbone_reference

TOL = 1e-5
LINEAR = HeadSettings(kind="linear")  # the last state only: a sequence classifier can compute it
MLP = HeadSettings(kind="mlp", hidden_dim=16, confidence=True)
ENDS_IN_EOS = "Q: 4+4=? A: 8<eos>"  # a real final eos: pad = eos pooling would skip it


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return load_tokenizer(str(tiny_backbone))


def critic_of(backbone: Path, head: HeadSettings, seed: int = 0) -> CriticModel:
    torch.manual_seed(seed)
    critic = CriticModel(load_backbone(str(backbone)), head_settings=head).eval()
    with torch.no_grad():  # away from the init, the bias included, so a round trip that drops a weight fails
        for p in critic.head.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return critic


def lora_of(backbone: Path, head: HeadSettings) -> torch.nn.Module:
    model = apply_lora(critic_of(backbone, head), LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["query_key_value", "dense"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def export(model, tokenizer, out: Path, backbone, head: HeadSettings, mode: str, **kwargs) -> Path:
    return save_critic(model, tokenizer, out, str(backbone), head, "{prompt}{response}", mode, **kwargs)


@torch.no_grad()
def lm_logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXTS[2])["input_ids"]])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


# ---- 1. LoRA as a standard PEFT adapter ----
def test_the_adapter_loads_onto_the_plain_causal_lm(tiny_backbone, tokenizer, tmp_path):
    from peft import PeftModel

    out = export(lora_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora")
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_backbone.resolve())
    assert adapter_config["task_type"] == "CAUSAL_LM"
    keys = load_file(str(out / "adapter" / "adapter_model.safetensors")).keys()
    assert keys and all(k.startswith("base_model.model.transformer.") for k in keys)
    assert not any("backbone." in k or ".head." in k for k in keys)
    assert (out / "head.safetensors").is_file()

    base = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    untouched = lm_logits(base, tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    ours = load_critic(out).model.backbone
    assert (lm_logits(plain, tokenizer) - lm_logits(ours, tokenizer)).abs().max() <= TOL
    assert (lm_logits(plain, tokenizer) - untouched).abs().max() > 1e-3  # the adapter changes the outputs


def test_a_format_1_lora_export_still_loads(tiny_backbone, tokenizer, tmp_path):
    """Format 1 saved the PeftModel around the whole critic (keys under `backbone.`) and an absolute path."""
    model = lora_of(tiny_backbone, MLP)
    out = tmp_path / "old"
    out.mkdir()
    model.save_pretrained(out / "adapter")
    from safetensors.torch import save_file

    save_file(head_state(model), str(out / "head.safetensors"))
    tokenizer.save_pretrained(out)
    config = {"format_version": 1, "backbone": {"name_or_path": str(tiny_backbone.resolve()), "mode": "lora"},
              "head": dataclasses.asdict(MLP), "template": "{prompt}{response}"}
    (out / CONFIG_NAME).write_text(json.dumps(config))
    for merge in (True, False):
        loaded = load_critic(out, merge=merge)
        assert (scores(loaded.model, loaded.tokenizer, TEXTS) - scores(model, tokenizer, TEXTS)).abs().max() <= TOL


# ---- 2. the backbone reference ----
def test_a_hub_id_stays_a_hub_id(tmp_path):
    assert backbone_reference("tiiuae/falcon-7b-instruct", tmp_path / "export") == {
        "name_or_path": "tiiuae/falcon-7b-instruct",
        "local": False,
    }


def test_a_local_backbone_is_found_after_the_project_moves(tiny_backbone, tokenizer, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_backbone, project / "backbone")
    critic = critic_of(project / "backbone", MLP)
    out = export(critic, tokenizer, project / "runs" / "export", project / "backbone", MLP, "frozen")
    entry = read_critic_config(out)["backbone"]
    assert entry["name_or_path"] == "../../backbone" and entry["local"] is True
    assert entry["absolute_path"] == str((project / "backbone").resolve())
    before = scores(critic, tokenizer, TEXTS)

    moved = tmp_path / "elsewhere"
    project.rename(moved)  # the absolute path is gone; the relative one still holds
    loaded = load_critic(moved / "runs" / "export")
    assert loaded.backbone_source == str((moved / "backbone").resolve())
    assert (scores(loaded.model, loaded.tokenizer, TEXTS) - before).abs().max() <= TOL

    shutil.move(moved / "backbone", tmp_path / "kept")  # now neither place holds it
    with pytest.raises(CheckpointError, match=r"backbone of the export .* is missing.*backbone=") as error:
        load_critic(moved / "runs" / "export")
    assert "\n" not in str(error.value) and str(moved / "backbone") in str(error.value)
    loaded = load_critic(moved / "runs" / "export", backbone=tmp_path / "kept")
    assert (scores(loaded.model, loaded.tokenizer, TEXTS) - before).abs().max() <= TOL
    with pytest.raises(CheckpointError, match="does not exist"):
        load_critic(moved / "runs" / "export", backbone=tmp_path / "nowhere")


# ---- 3. the model card ----
def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_model_card_says_what_the_critic_is_and_how_to_load_it(tiny_backbone, tokenizer, tiny_data, tmp_path):
    facts = {
        "phase": "finetune",
        "objective": {"kind": "bce", "calibrate": True},
        "data": {"train_files": [{"path": str(tiny_data["train"]), "sha256": "f" * 64}], "schema": "pointwise"},
        "test_metrics": {"test/auroc": 0.875, "test/loss": 0.5},
        "license": "apache-2.0",
    }
    out = export(lora_of(tiny_backbone, LINEAR), tokenizer, tmp_path / "export", tiny_backbone, LINEAR, "lora", extra=facts)
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"autocritic", "reward-model"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local directory is no hub id
    for text in ("finetune", "kind=linear", "kind=bce", "f" * 64, "test/auroc | 0.8750", "LoRA",
                 "PeftModel.from_pretrained", "AutoModelForSequenceClassification", "CriticGenerator.from_export"):
        assert text in card, text

    hub_config = read_critic_config(out)
    hub_config["backbone"] = {"name_or_path": "tiiuae/falcon-7b-instruct", "local": False, "mode": "frozen"}
    from autocritic.model.card import model_card

    assert front_matter(model_card(hub_config, set()))["base_model"] == "tiiuae/falcon-7b-instruct"


def test_file_facts_hash_the_files_that_exist(tiny_data, tmp_path):
    from autocritic.model.card import file_facts

    digest = hashlib.sha256(tiny_data["train"].read_bytes()).hexdigest()
    assert file_facts([str(tiny_data["train"]), str(tmp_path / "gone.jsonl")]) == [
        {"path": str(tiny_data["train"]), "sha256": digest, "bytes": tiny_data["train"].stat().st_size},
        {"path": str(tmp_path / "gone.jsonl")},
    ]


# ---- 4. save_pretrained, from_pretrained, push_to_hub ----
class FakeHub:
    """Records what HfApi would create and upload: the repo, its privacy, and the files of the folder."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.repos, self.uploads = [], []

        def create_repo(api, repo_id, **kwargs):
            self.repos.append({"repo_id": repo_id} | kwargs)

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            self.uploads.append({"repo_id": repo_id, "folder_path": folder_path, "files": files} | kwargs)
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_export_uploads_the_export_folder(tiny_backbone, tokenizer, tmp_path, monkeypatch, caplog):
    fake = FakeHub(monkeypatch)
    out = export(lora_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora")
    with caplog.at_level("WARNING", logger="autocritic"):
        url = hub.push_export(out, "user/critic", private=True)
    assert "local directory" in caplog.text  # who loads it elsewhere needs the backbone too
    assert url == "https://huggingface.co/user/critic/commit/abc"
    assert fake.repos == [{"repo_id": "user/critic", "private": True, "repo_type": "model", "exist_ok": True}]
    (upload,) = fake.uploads
    assert upload["repo_id"] == "user/critic" and upload["folder_path"] == str(out)
    assert {"critic_config.json", "README.md", "head.safetensors", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json"} <= set(upload["files"])
    with pytest.raises(CheckpointError, match="not an autocritic export"):
        hub.push_export(tmp_path, "user/critic")


def test_from_pretrained_save_pretrained_and_push_to_hub(tiny_backbone, tokenizer, tmp_path, monkeypatch):
    model = lora_of(tiny_backbone, MLP)
    before = scores(model, tokenizer, TEXTS)
    out = export(model, tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora", extra={"phase": "finetune"})
    asked = []

    def snapshot_download(repo_id, revision=None, token=None, **kwargs):
        asked.append((repo_id, revision))
        return str(out)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    critic = hub.AutoCritic.from_pretrained("user/critic", revision="v1", merge=False)
    assert asked == [("user/critic", "v1")]
    assert isinstance(critic, LoadedCritic) and (scores(critic.model, critic.tokenizer, TEXTS) - before).abs().max() <= TOL

    again = critic.save_pretrained(tmp_path / "copy")  # unmerged: an adapter again
    assert (again / "adapter" / "adapter_model.safetensors").is_file() and read_critic_config(again)["phase"] == "finetune"
    reloaded = load_critic(again)
    assert (scores(reloaded.model, reloaded.tokenizer, TEXTS) - before).abs().max() <= TOL

    fake = FakeHub(monkeypatch)
    critic.push_to_hub("user/critic-copy", private=False)
    assert fake.repos[0]["private"] is False and fake.uploads[0]["repo_id"] == "user/critic-copy"
    assert {"critic_config.json", "README.md", "adapter/adapter_model.safetensors"} <= set(fake.uploads[0]["files"])


def test_a_hub_id_offline_without_a_cache_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(CheckpointError, match="no export directory here, and as a hub id it is not in the hub cache") as error:
        hub.AutoCritic.from_pretrained("user/never-downloaded")
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="neither an export directory nor a hub id"):
        hub.AutoCritic.from_pretrained(str(tmp_path / "missing"))


# ---- 5. the merged export ----
def test_a_merged_export_scores_like_the_unmerged_one(tiny_backbone, tokenizer, tmp_path):
    model = lora_of(tiny_backbone, MLP)
    out = export(model, tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora", merged=True)
    assert (out / "backbone" / "config.json").is_file() and (out / "adapter").is_dir()
    assert read_critic_config(out)["backbone"]["merged"] is True
    merged = load_critic(out)
    assert merged.backbone_source == str(out / "backbone")  # read from backbone/, no peft involved
    unmerged = load_critic(out, merge=False)
    assert not isinstance(unmerged.model, CriticModel)  # the PeftModel around the critic
    merged_scores = scores(merged.model, merged.tokenizer, TEXTS)
    assert (merged_scores - scores(unmerged.model, tokenizer, TEXTS)).abs().max() <= TOL
    assert (merged_scores - scores(model, tokenizer, TEXTS)).abs().max() <= TOL


# ---- 6. the sequence-classification copy ----
def sequence_scores(path: Path, texts: list[str], batched: bool) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(path)  # no trust_remote_code
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        if batched:
            return model(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0]
        return torch.cat([model(**tok([t], return_tensors="pt")).logits[:, 0] for t in texts])


@pytest.mark.parametrize("mode", ["frozen", "lora", "members"])
def test_the_sequence_classifier_scores_like_the_critic(tiny_backbone, tokenizer, tmp_path, mode):
    head = dataclasses.replace(LINEAR, members=2) if mode == "members" else LINEAR
    model = lora_of(tiny_backbone, head) if mode == "lora" else critic_of(tiny_backbone, head)
    assert abs(float(head_state(model)["net.bias" if mode != "members" else "members.0.net.bias"])) > 1e-3
    out = export(model, tokenizer, tmp_path / "export", tiny_backbone, head, "lora" if mode == "lora" else "frozen")
    assert read_critic_config(out)["sequence_classification"] == {"written": True}
    path = out / "sequence_classification"
    assert json.loads((path / "config.json").read_text())["architectures"] == ["FalconForSequenceClassification"]
    texts = [*TEXTS, ENDS_IN_EOS]
    loaded = load_critic(out)
    ours = scores(loaded.model, loaded.tokenizer, texts)
    assert (ours - scores(model, tokenizer, texts)).abs().max() <= TOL
    assert ours.std() > 0
    for batched in (False, True):
        assert (sequence_scores(path, texts, batched) - ours).abs().max() <= TOL, f"batched={batched}"
    pad = AutoTokenizer.from_pretrained(path).pad_token_id
    assert pad not in tokenizer(ENDS_IN_EOS)["input_ids"] and pad != tokenizer.eos_token_id


def test_no_sequence_classifier_for_a_head_it_cannot_compute(tiny_backbone, tokenizer, tmp_path):
    out = export(critic_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "frozen")
    assert not (out / "sequence_classification").exists()
    entry = read_critic_config(out)["sequence_classification"]
    assert entry["written"] is False and "not linear" in entry["reason"]
    assert entry["reason"] in (out / "README.md").read_text()
    off = export(critic_of(tiny_backbone, LINEAR), tokenizer, tmp_path / "off", tiny_backbone, LINEAR, "frozen",
                 sequence_classification=False)
    assert not (off / "sequence_classification").exists()


def test_a_final_norm_without_a_bias_takes_a_head_without_one(tokenizer, tmp_path):
    """Llama's RMSNorm has no bias to fold the head's into: written only when the head's bias is 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    critic = critic_of(llama, LINEAR)
    biased = export(critic, tokenizer, tmp_path / "biased", llama, LINEAR, "frozen")
    entry = read_critic_config(biased)["sequence_classification"]
    assert entry["written"] is False and "fold" in entry["reason"]
    with torch.no_grad():
        critic.head.net.bias.zero_()
    out = export(critic, tokenizer, tmp_path / "unbiased", llama, LINEAR, "frozen")
    path = out / "sequence_classification"
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    texts = [*TEXTS, ENDS_IN_EOS]
    ours = scores(critic, tokenizer, texts)
    assert (sequence_scores(path, texts, batched=True) - ours).abs().max() <= TOL


# ---- 7. devices ----
def test_auto_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_and_dtype("auto", "auto") == (torch.device("cpu"), "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_and_dtype("auto", "auto") == (torch.device("cuda"), "bfloat16")
    assert device_and_dtype("cpu", "auto") == (torch.device("cpu"), "float32")


def test_from_export_passes_device_and_dtype(tiny_backbone, tokenizer, tmp_path):
    out = export(critic_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "frozen")
    generator = CriticGenerator.from_export(out, device="cpu", dtype="bfloat16")
    assert generator.model.backbone.dtype == torch.bfloat16 and generator.device == torch.device("cpu")
    auto = CriticGenerator.from_export(out, device="auto", dtype="auto")
    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert auto.model.backbone.dtype == expected


# ---- through training: the facts, export.merged ----
def test_a_finetune_run_writes_the_facts_and_a_merged_backbone(tiny_backbone, tiny_data, tokenizer, tmp_path):
    from autocritic.training import run

    start = export(critic_of(tiny_backbone, LINEAR), tokenizer, tmp_path / "start", tiny_backbone, LINEAR, "frozen")
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "lora"), "phase=finetune", f"ckpt={start}",
                         f"data.test_files=[{tiny_data['test']}]", "trainer.fast_dev_run=true", "export.merged=true",
                         "export.license=apache-2.0"])
    run.train(cfg)
    out = Path(cfg.paths.run_dir) / "export"
    config = read_critic_config(out)
    assert config["backbone"]["mode"] == "lora" and config["backbone"]["merged"] is True
    assert (out / "backbone").is_dir() and (out / "sequence_classification").is_dir()
    digest = hashlib.sha256(tiny_data["test"].read_bytes()).hexdigest()
    assert config["data"]["test_files"] == [{"path": str(tiny_data["test"]), "sha256": digest,
                                             "bytes": tiny_data["test"].stat().st_size}]
    assert config["objective"]["kind"] == "bce" and config["test_metrics"] and config["license"] == "apache-2.0"
    card = (out / "README.md").read_text()
    assert digest in card and "test/auroc" in card and front_matter(card)["license"] == "apache-2.0"
    merged, unmerged = load_critic(out), load_critic(out, merge=False)
    assert (scores(merged.model, tokenizer, TEXTS) - scores(unmerged.model, tokenizer, TEXTS)).abs().max() <= TOL


def test_the_push_command_uploads_an_export_and_says_clearly_when_it_cannot(tiny_backbone, tokenizer, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from autocritic.cli import push

    fake = FakeHub(monkeypatch)
    out = export(lora_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora")
    push([str(out), "user/critic", "--private", "--revision", "v1"])
    assert capsys.readouterr().out.strip() == "https://huggingface.co/user/critic/commit/abc"
    assert fake.repos[0]["private"] is True and fake.uploads[0]["revision"] == "v1"
    assert "critic_config.json" in fake.uploads[0]["files"]

    with pytest.raises(SystemExit) as stopped:
        push([str(tmp_path), "user/critic"])  # not an export: nothing is uploaded
    assert stopped.value.code == 2 and "not an autocritic export" in capsys.readouterr().err
    assert len(fake.uploads) == 1

    def offline(api, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines")

    monkeypatch.setattr(HfApi, "upload_folder", offline)
    with pytest.raises(SystemExit) as stopped:
        push([str(out), "user/critic"])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and "failed: ConnectionError: Failed to resolve 'huggingface.co' (log in" in err
    assert err.count("\n") == 1


def test_training_or_loading_an_adapter_does_not_print_bitsandbytes_kernel_notices(tiny_backbone, tokenizer, tmp_path):
    """peft imports bitsandbytes (0.21 at `import peft`, 0.22 when it first wraps or loads an adapter), and on a CPU
    with AVX512-BF16 bitsandbytes then prints that it cannot fetch its 4-bit kernel: noise outside a quantized run."""

    def stderr_of(code: str) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "ok"
        return result.stderr

    if "kernels-community" not in stderr_of("import bitsandbytes; print('ok')"):
        pytest.skip("this machine's bitsandbytes says nothing at import (no AVX512-BF16 CPU, or no bitsandbytes)")
    out = export(lora_of(tiny_backbone, MLP), tokenizer, tmp_path / "export", tiny_backbone, MLP, "lora")
    loading = f"from autocritic.model.export import load_critic\nload_critic({str(out)!r}, merge=False)\nprint('ok')"
    assert "kernels-community" not in stderr_of(loading)
    wrapping = (
        "from transformers import AutoModelForCausalLM\nfrom autocritic.improve.generator import GeneratorSettings, "
        f"with_lora\nwith_lora(AutoModelForCausalLM.from_pretrained({str(tiny_backbone)!r}), GeneratorSettings())\n"
        "print('ok')"
    )
    assert "kernels-community" not in stderr_of(wrapping)
