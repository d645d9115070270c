"""Quantization really quantizes Falcon (nf4 / int8 on CPU), QLoRA trains adapters only, bad configs are refused."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoModelForCausalLM, FalconConfig, FalconForCausalLM
from transformers.models.falcon import modeling_falcon

from autocritic.errors import ConfigError
from autocritic.model.quantization import (
    QuantizationSettings,
    bnb_config,
    check_quantization_compatible,
    check_quantized,
    count_quantized_linears,
    load_causal_lm,
    model_footprint_bytes,
    prepare_for_kbit_training,
    require_bitsandbytes,
)

logging.getLogger("bitsandbytes").setLevel(
    logging.ERROR
)  # a harmless line about the optional `kernels` package
import bitsandbytes as bnb  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "quantization"
LAYERS = 8  # 2 blocks x (query_key_value, dense, dense_h_to_4h, dense_4h_to_h); lm_head stays full precision
LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
BNB_CLASSES = {"nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}
COUNT_KEYS = {"nf4": "linear4bit", "int8": "linear8bit"}


@pytest.fixture(scope="module")
def falcon_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = FalconConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        new_decoder_architecture=True,
        num_kv_heads=2,
        alibi=False,
    )
    path = tmp_path_factory.mktemp("tiny_falcon")
    FalconForCausalLM(config).save_pretrained(path)
    return str(path)


def token_ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


def test_falcon_linear_is_numerically_plain_linear():
    """The fix builds nn.Linear where Falcon builds FalconLinear: both compute x @ W.T + b."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 64)
    for bias in (True, False):
        falcon = modeling_falcon.FalconLinear(64, 96, bias=bias)
        plain = nn.Linear(64, 96, bias=bias)
        plain.load_state_dict(falcon.state_dict())
        torch.testing.assert_close(plain(x), falcon(x), rtol=1e-6, atol=1e-6)


def test_naive_quantization_config_leaves_falcon_unquantized(falcon_dir):
    """The trap, still present in transformers 5.24; if this fails, transformers fixed it upstream."""
    settings = QuantizationSettings(mode="nf4")
    naive = AutoModelForCausalLM.from_pretrained(falcon_dir, quantization_config=bnb_config(settings))
    assert count_quantized_linears(naive) == {"linear4bit": 0, "linear8bit": 0, "linear": LAYERS + 1}
    with pytest.raises(ConfigError, match="unquantized"):
        check_quantized(naive, settings)


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_falcon_is_really_quantized(falcon_dir, mode):
    full = AutoModelForCausalLM.from_pretrained(falcon_dir)
    model = load_causal_lm(falcon_dir, QuantizationSettings(mode=mode))

    counts = count_quantized_linears(model)
    assert counts[COUNT_KEYS[mode]] == LAYERS and counts["linear"] == 1  # lm_head (tied to the embeddings)
    for block in model.transformer.h:
        for layer in (block.self_attention.query_key_value, block.mlp.dense_4h_to_h):
            assert type(layer) is BNB_CLASSES[mode]
    assert model_footprint_bytes(model) < 0.4 * model_footprint_bytes(full)
    assert modeling_falcon.FalconLinear is not nn.Linear  # the patch is undone after loading

    with torch.no_grad():
        quantized_logits = model(token_ids()).logits
        full_logits = full(token_ids()).logits
    relative_error = (quantized_logits - full_logits).norm() / full_logits.norm()
    assert relative_error < 0.25  # same function, up to quantization noise


def test_mode_none_loads_the_unchanged_falcon(falcon_dir):
    model = load_causal_lm(falcon_dir, {"mode": "none"})
    assert count_quantized_linears(model) == {"linear4bit": 0, "linear8bit": 0, "linear": LAYERS + 1}
    assert type(model.transformer.h[0].self_attention.query_key_value) is modeling_falcon.FalconLinear


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_qlora_step_changes_adapters_not_the_quantized_base(falcon_dir, mode):
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(falcon_dir, QuantizationSettings(mode=mode))
    model = prepare_for_kbit_training(model, gradient_checkpointing=True)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "ln" in n)
    assert all(layer.gradient_checkpointing for layer in model.transformer.h)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS)
    )
    model.train()

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=token_ids(), labels=token_ids()).loss
    loss.backward()
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    lora_b = {n for n in trainable if "lora_B" in n}
    assert len(lora_b) == LAYERS and lora_b <= changed
    assert changed <= trainable  # packed 4/8-bit weights, norms and embeddings untouched
    assert count_quantized_linears(model)[COUNT_KEYS[mode]] == LAYERS


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_full_finetuning_of_a_quantized_backbone_is_refused(mode):
    with pytest.raises(ConfigError, match="cannot be fully fine-tuned.*peft=lora"):
        check_quantization_compatible(mode, "none")


def test_allowed_combinations():
    check_quantization_compatible("nf4", "lora")
    check_quantization_compatible("int8", "lora")
    check_quantization_compatible("none", "none")
    check_quantization_compatible("nf4", "none", backbone_trainable=False)  # frozen transfer phase


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "int4"},
        {"mode": "nf4", "compute_dtype": "float64"},
        {"mode": "nf4", "quant_type": "int2"},
    ],
)
def test_unknown_values_are_refused(bad):
    with pytest.raises(ConfigError, match="is not one of"):
        bnb_config(QuantizationSettings(**bad))


def test_unknown_mode_is_refused_before_loading():
    with pytest.raises(ConfigError, match="is not one of"):
        load_causal_lm("/nonexistent/model", QuantizationSettings(mode="int4"))
    with pytest.raises(ConfigError, match="is not one of"):
        check_quantization_compatible("int4", "lora")
    with pytest.raises(ConfigError, match="unknown quantization keys"):
        QuantizationSettings.from_config({"mode": "nf4", "bits": 4})


def test_bnb_config_fields():
    assert bnb_config(QuantizationSettings()) is None
    four = bnb_config(
        QuantizationSettings(mode="nf4", double_quant=False, compute_dtype="float16", quant_type="fp4")
    )
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "fp4" and four.bnb_4bit_compute_dtype == torch.float16
    assert not four.bnb_4bit_use_double_quant and four.llm_int8_skip_modules == ["lm_head"]
    eight = bnb_config(QuantizationSettings(mode="int8"))
    assert eight.load_in_8bit and not eight.load_in_4bit


@pytest.mark.parametrize("name", ["none", "nf4", "int8"])
def test_yaml_configs_mirror_the_settings(name):
    config = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    settings = QuantizationSettings.from_config(config)
    assert settings.mode == name
    assert set(config) == set(QuantizationSettings.__dataclass_fields__)
    assert (bnb_config(settings) is None) == (name == "none")


def test_missing_bitsandbytes_is_a_config_error(falcon_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ConfigError, match="pip install"):
        load_causal_lm(falcon_dir, QuantizationSettings(mode="nf4"))


def test_a_backend_without_kernels_is_a_config_error(monkeypatch):
    def missing_kernel(*args, **kwargs):
        raise NotImplementedError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", missing_kernel)
    with pytest.raises(ConfigError, match="cannot run a nf4 layer.*quantization=none"):
        require_bitsandbytes("nf4")
