"""Falcon-7B-style multi-query attention through fused SDPA: same numbers as transformers' own, installed on load."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import FalconConfig, FalconForCausalLM

from autocritic.model.backbone import load_backbone
from autocritic.model.falcon_attention import attention_is_fused, use_fused_attention

MASKS = {
    "no padding": [[1] * 9, [1] * 9, [1] * 9],
    "left padding": [[0, 0] + [1] * 7, [1] * 9, [0] * 4 + [1] * 5],
    "right padding": [[1] * 7 + [0, 0], [1] * 9, [1] * 5 + [0] * 4],
}


def multi_query_falcon(**overrides) -> FalconForCausalLM:
    torch.manual_seed(0)
    config = dict(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        new_decoder_architecture=False,
        parallel_attn=True,
        alibi=False,
        bias=False,
    )
    return FalconForCausalLM(FalconConfig(**(config | overrides))).eval()


@pytest.fixture
def pair():
    native = multi_query_falcon()
    fused = copy.deepcopy(native)
    assert use_fused_attention(fused) == 2
    assert attention_is_fused(fused) and not attention_is_fused(native)
    return native, fused


@pytest.mark.parametrize("padding", list(MASKS))
def test_fused_attention_matches_transformers(pair, padding):
    native, fused = pair
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.tensor(MASKS[padding])
    with torch.no_grad():
        expected = native(input_ids=ids, attention_mask=mask).logits
        got = fused(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (expected - got)[real].abs().max() <= 1e-5


def test_fused_attention_gradients_match(pair):
    native, fused = pair
    ids = torch.randint(0, 100, (2, 7))
    for model in (native, fused):
        model.train()
        model(input_ids=ids).logits.pow(2).mean().backward()
    for (name, a), b in zip(native.named_parameters(), fused.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_fused_attention_generates_the_same_tokens_with_the_cache(pair):
    native, fused = pair
    prompt = torch.randint(0, 100, (1, 5))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(native.generate(prompt, **kwargs), fused.generate(prompt, **kwargs))


def test_only_multi_query_sdpa_attention_is_swapped():
    assert use_fused_attention(multi_query_falcon(multi_query=False)) == 0  # full multi-head: SDPA already fuses
    assert use_fused_attention(multi_query_falcon(attn_implementation="eager")) == 0
    alibi = multi_query_falcon(alibi=True)
    swapped = copy.deepcopy(alibi)
    assert use_fused_attention(swapped) == 2  # the alibi path is delegated to transformers' own forward
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        assert torch.allclose(alibi(input_ids=ids).logits, swapped(input_ids=ids).logits, atol=1e-6)


def test_load_backbone_installs_it(tmp_path):
    multi_query_falcon().save_pretrained(tmp_path)
    assert attention_is_fused(load_backbone(str(tmp_path)))
