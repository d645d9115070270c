"""Falcon's attention: the numbers of every layout pinned to a reference computation, and multi-query attention
through a fused SDPA kernel on every supported transformers (autocritic's swap before 5.25, transformers' own path
from 5.25 on)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers
from packaging.version import Version
from torch.nn import functional as F
from transformers import FalconConfig, FalconForCausalLM

from autocritic.model.backbone import load_backbone
from autocritic.model.falcon_attention import attention_is_fused, swap_needed, use_fused_attention

MASKS = {
    "no padding": [[1] * 9, [1] * 9, [1] * 9],
    "left padding": [[0, 0] + [1] * 7, [1] * 9, [0] * 4 + [1] * 5],
    "right padding": [[1] * 7 + [0, 0], [1] * 9, [1] * 5 + [0] * 4],
}
LAYOUTS = {
    "multi-query (Falcon-7B)": dict(multi_query=True, new_decoder_architecture=False),
    "grouped key/value (Falcon-40B, the offline default)": dict(new_decoder_architecture=True, num_kv_heads=2),
    "multi-head": dict(multi_query=False, new_decoder_architecture=False),
}
NEEDS_SWAP = Version(transformers.__version__).release < (5, 25)


def falcon(**overrides) -> FalconForCausalLM:
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


def reference_logits(model: FalconForCausalLM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Falcon's forward written out in float64 from its weights (rotary, no ALiBi), for rows without left padding."""
    config, weights = model.config, {k: v.double() for k, v in model.state_dict().items()}
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    batch, length = ids.shape
    if config.new_decoder_architecture:
        kv_heads = config.num_kv_heads
    else:
        kv_heads = 1 if config.multi_query else heads

    def linear(x, name):
        out = x @ weights[f"{name}.weight"].T
        return out + weights[f"{name}.bias"] if f"{name}.bias" in weights else out

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], config.layer_norm_epsilon)

    theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inverse[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotate(x):  # (B, h, T, hd)
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def attention(x, prefix):
        qkv = linear(x, f"{prefix}.query_key_value")
        if config.new_decoder_architecture:  # per group: its queries, then its key and value
            grouped = qkv.view(batch, length, kv_heads, heads // kv_heads + 2, head_dim)
            q, k, v = grouped[..., :-2, :].flatten(2, 3), grouped[..., -2, :], grouped[..., -1, :]
        elif config.multi_query:
            fused = qkv.view(batch, length, heads + 2, head_dim)
            q, k, v = fused[..., :heads, :], fused[..., heads : heads + 1, :], fused[..., heads + 1 :, :]
        else:  # query, key and value interleaved per head
            q, k, v = qkv.view(batch, length, heads, 3, head_dim).unbind(3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, T, hd)
        q, k = rotate(q), rotate(k)
        k = k.repeat_interleave(heads // kv_heads, dim=1)  # query head i reads key/value head i // group size
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        allowed = torch.ones(length, length, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
        return linear(out, f"{prefix}.dense")

    def mlp(x, prefix):
        return linear(F.gelu(linear(x, f"{prefix}.dense_h_to_4h")), f"{prefix}.dense_4h_to_h")

    x = weights["transformer.word_embeddings.weight"][ids]
    for layer in range(config.num_hidden_layers):
        prefix = f"transformer.h.{layer}"
        if config.new_decoder_architecture and config.num_ln_in_parallel_attn == 2:
            x = x + attention(norm(x, f"{prefix}.ln_attn"), f"{prefix}.self_attention") + mlp(norm(x, f"{prefix}.ln_mlp"), f"{prefix}.mlp")
        elif config.parallel_attn:
            normed = norm(x, f"{prefix}.input_layernorm")
            x = x + attention(normed, f"{prefix}.self_attention") + mlp(normed, f"{prefix}.mlp")
        else:
            x = x + attention(norm(x, f"{prefix}.input_layernorm"), f"{prefix}.self_attention")
            x = x + mlp(norm(x, f"{prefix}.post_attention_layernorm"), f"{prefix}.mlp")
    return norm(x, "transformer.ln_f") @ model.lm_head.weight.double().T


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("padding", ["no padding", "right padding"])
def test_forward_matches_the_reference_computation(layout, padding):
    """Pins transformers' Falcon (and autocritic's swap, where installed) to Falcon's equations: a release that
    changes the numbers of any layout fails here."""
    model = falcon(**LAYOUTS[layout])
    use_fused_attention(model)
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.tensor(MASKS[padding])
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits.double()
    expected = reference_logits(model, ids, mask)
    real = mask.bool()
    assert (got - expected)[real].abs().max() <= 1e-4


def sdpa_kernels(model: FalconForCausalLM, mask: torch.Tensor | None) -> set[str]:
    ids = torch.randint(0, 100, (3, 9))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    return {event.name for event in profile.events() if event.name.startswith("aten::_scaled_dot_product")}


@pytest.mark.parametrize("padding", [None, "left padding"])
def test_multi_query_attention_reaches_a_fused_kernel(padding):
    """The math kernel materialises every attention score (125 GiB at 8×1024 tokens of Falcon-7B LoRA): with the
    model as `load_backbone` sets it up, SDPA must take a fused kernel, here the CPU flash kernel."""
    model = falcon()
    use_fused_attention(model)
    mask = None if padding is None else torch.tensor(MASKS[padding])
    kernels = sdpa_kernels(model, mask)
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    assert any("flash" in name or "efficient" in name for name in kernels), kernels


def test_the_swap_is_installed_exactly_where_transformers_needs_it():
    model = falcon()
    swapped = use_fused_attention(model)
    assert swap_needed() == NEEDS_SWAP
    if NEEDS_SWAP:
        assert swapped == 2 and attention_is_fused(model)
        native = falcon()
        assert "aten::_scaled_dot_product_attention_math" in sdpa_kernels(native, None)  # what the swap is for
    else:
        assert swapped == 0 and not attention_is_fused(model)


def test_load_backbone_sets_up_the_fused_path(tmp_path):
    falcon().save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    assert attention_is_fused(backbone) == NEEDS_SWAP
    assert "aten::_scaled_dot_product_attention_math" not in sdpa_kernels(backbone, None)


needs_swap = pytest.mark.skipif(not NEEDS_SWAP, reason="transformers >= 5.25 reaches the fused kernels itself")


@pytest.fixture
def pair():
    native = falcon()
    fused = copy.deepcopy(native)
    assert use_fused_attention(fused) == 2
    assert attention_is_fused(fused) and not attention_is_fused(native)
    return native, fused


@needs_swap
@pytest.mark.parametrize("padding", list(MASKS))
def test_swapped_attention_matches_transformers(pair, padding):
    native, fused = pair
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.tensor(MASKS[padding])
    with torch.no_grad():
        expected = native(input_ids=ids, attention_mask=mask).logits
        got = fused(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (expected - got)[real].abs().max() <= 1e-5


@needs_swap
def test_swapped_attention_gradients_match(pair):
    native, fused = pair
    ids = torch.randint(0, 100, (2, 7))
    for model in (native, fused):
        model.train()
        model(input_ids=ids).logits.pow(2).mean().backward()
    for (name, a), b in zip(native.named_parameters(), fused.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@needs_swap
def test_swapped_attention_generates_the_same_tokens_with_the_cache(pair):
    native, fused = pair
    prompt = torch.randint(0, 100, (1, 5))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(native.generate(prompt, **kwargs), fused.generate(prompt, **kwargs))


@needs_swap
def test_only_multi_query_sdpa_attention_is_swapped():
    assert use_fused_attention(falcon(multi_query=False)) == 0  # full multi-head: SDPA already fuses
    assert use_fused_attention(falcon(attn_implementation="eager")) == 0
    alibi = falcon(alibi=True)
    swapped = copy.deepcopy(alibi)
    assert use_fused_attention(swapped) == 2  # the alibi path is delegated to transformers' own forward
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        assert torch.allclose(alibi(input_ids=ids).logits, swapped(input_ids=ids).logits, atol=1e-6)
