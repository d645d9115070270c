"""CriticModel on the tiny Falcon: padding invariance, per-token values, fp32 head, and the export round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import PROMPT_TOKENS, TEXTS, encode, scores
from safetensors.torch import load_file
from transformers import FalconConfig, FalconForCausalLM

from autocritic.errors import CheckpointError, ConfigError
from autocritic.model.backbone import LoraSettings, apply_lora, load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel, CriticOutput, decoder_of, last_token_index
from autocritic.model.export import (
    HEAD_NAME,
    head_state,
    load_critic,
    load_head,
    read_critic_config,
    save_critic,
)
from autocritic.model.head import CriticHead, HeadSettings

TOL = 1e-5
HEADS = {
    "linear": HeadSettings(kind="linear"),
    "mlp": HeadSettings(kind="mlp", hidden_dim=16),
}
CONFIDENCE = HeadSettings(kind="mlp", hidden_dim=16, confidence=True)
# Reads the last 6 final states: longer than "ab" (2 tokens), shorter than the longest text.
WINDOW = HeadSettings(kind="attention", hidden_dim=16, attention_heads=2, window=6, confidence=True)
# The same, also reading the window's token ids.
TOKENS = dataclasses.replace(WINDOW, tokens=True)
# Three such heads, scoring as the mean of their logits.
MEMBERS = dataclasses.replace(TOKENS, members=3)
WITH_CONFIDENCE = HEADS | {"confidence": CONFIDENCE, "window": WINDOW, "tokens": TOKENS, "members": MEMBERS}


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return load_tokenizer(str(tiny_backbone))


def make_critic(path, head: HeadSettings, dtype: str = "float32", seed: int = 0) -> CriticModel:
    torch.manual_seed(seed)
    return CriticModel(load_backbone(str(path), dtype=dtype), head_settings=head).eval()


def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Move weights away from their init, so a round trip that drops them cannot pass by chance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))


# ---- the forward pass ----
def test_last_token_index_reads_the_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.mark.parametrize("kind", WITH_CONFIDENCE)
def test_scores_do_not_depend_on_padding_or_batch(tiny_backbone, tokenizer, kind):
    critic = make_critic(tiny_backbone, WITH_CONFIDENCE[kind])
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(set(lengths)) == len(TEXTS)  # really different lengths, so padding is exercised
    right = scores(critic, tokenizer, TEXTS, side="right")
    left = scores(critic, tokenizer, TEXTS, side="left")
    alone = torch.cat([scores(critic, tokenizer, [t]) for t in TEXTS])
    assert right.shape == (len(TEXTS),)
    assert (right - left).abs().max() <= TOL
    assert (right - alone).abs().max() <= TOL
    assert right.std() > 0  # the texts are not scored alike: the comparison means something


@pytest.mark.parametrize("kind", ["mlp", "confidence", "window", "tokens"])
def test_values_per_token_and_their_last_real_token_is_the_score(tiny_backbone, tokenizer, kind):
    critic = make_critic(tiny_backbone, WITH_CONFIDENCE[kind])
    for side in ("right", "left"):
        input_ids, mask = encode(tokenizer, TEXTS, side)
        with torch.no_grad():
            out = critic(input_ids, mask, torch.full((len(TEXTS),), PROMPT_TOKENS), return_values=True)
        assert out.values.shape == input_ids.shape  # (B, T)
        at_last = out.values[torch.arange(len(TEXTS)), mask.sum(-1) - 1 if side == "right" else -1]
        assert (at_last - out.score).abs().max() <= TOL


def test_output_keeps_only_the_pooled_state(tiny_backbone, tokenizer):
    assert {f.name for f in dataclasses.fields(CriticOutput)} == {
        "score", "hidden", "values", "logits", "confidence", "members"
    }
    critic = make_critic(tiny_backbone, HEADS["linear"])
    seen = []
    decoder_of(critic.backbone).register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs, out)), with_kwargs=True
    )
    input_ids, mask = encode(tokenizer, TEXTS)
    with torch.no_grad():
        out = critic(input_ids, mask)
    kwargs, decoder_out = seen[0]
    assert not kwargs.get("output_hidden_states")
    assert getattr(decoder_out, "hidden_states", None) is None  # no per-layer activations kept alive
    assert out.hidden.shape == (len(TEXTS), critic.config.hidden_size)  # (B, H): pooled, not (B, T, H)
    assert out.values is None and out.logits is None and out.confidence is None and out.members is None


def test_logits_are_the_lm_logits_of_the_same_state(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, HEADS["linear"])
    input_ids, mask = encode(tokenizer, TEXTS, "right")
    with torch.no_grad():
        out = critic(input_ids, mask, return_logits=True)
        reference = critic.backbone(input_ids=input_ids, attention_mask=mask).logits
    real = mask.bool()
    assert out.logits.shape == reference.shape
    assert (out.logits[real] - reference[real]).abs().max() <= 1e-4


def test_confidence_is_the_mean_and_min_logprob_of_the_response_tokens(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, CONFIDENCE)
    prompt_lengths = torch.tensor([PROMPT_TOKENS, 4, PROMPT_TOKENS, 5])  # "ab" (2 tokens): no response at all
    by_side = []
    for side in ("right", "left"):
        input_ids, mask = encode(tokenizer, TEXTS, side)
        with torch.no_grad():
            by_side.append(critic(input_ids, mask, prompt_lengths).confidence)
    assert (by_side[0] - by_side[1]).abs().max() <= TOL
    for row, text in enumerate(TEXTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logprobs = critic.backbone(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        response = logprobs[int(prompt_lengths[row]) - 1 :]
        expected = [response.mean(), response.min()] if len(response) else [0.0, 0.0]
        assert by_side[0][row].tolist() == pytest.approx([float(x) for x in expected], abs=1e-4)
    assert by_side[0][0, 0] > by_side[0][0, 1]  # mean above min: two different features


def test_confidence_moves_the_score_and_needs_prompt_lengths(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, CONFIDENCE)
    input_ids, mask = encode(tokenizer, TEXTS)
    with pytest.raises(ValueError, match="prompt_lengths"):
        critic(input_ids, mask)
    with torch.no_grad():
        out = critic(input_ids, mask, torch.full((len(TEXTS),), PROMPT_TOKENS))
        without = critic.head.net(torch.cat([out.hidden, torch.zeros_like(out.confidence)], -1)).squeeze(-1)
    assert (out.score - without).abs().max() > 1e-4  # the features reach the score


@pytest.mark.parametrize("kind", HEADS)
def test_head_runs_in_fp32_on_a_bf16_backbone(tiny_backbone, tokenizer, kind):
    critic = make_critic(tiny_backbone, HEADS[kind], dtype="bfloat16")
    assert next(critic.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in critic.head.parameters())
    input_ids, mask = encode(tokenizer, TEXTS)
    with torch.no_grad():
        out = critic(input_ids, mask, return_values=True)
        by_hand = critic.head.net(out.hidden.float()).squeeze(-1)  # fp32 weights on the upcast state
    assert out.hidden.dtype == torch.bfloat16
    assert out.score.dtype == torch.float32 and out.values.dtype == torch.float32
    assert torch.equal(out.score, by_hand)


@pytest.mark.parametrize("kind", WITH_CONFIDENCE)
def test_a_head_cast_to_bf16_with_the_model_still_scores_in_fp32(tiny_backbone, tokenizer, kind):
    critic = make_critic(tiny_backbone, WITH_CONFIDENCE[kind]).to(torch.bfloat16)  # what DeepSpeed's bf16 does
    input_ids, mask = encode(tokenizer, TEXTS)
    with torch.no_grad():
        out = critic(input_ids, mask, prompt_lengths=torch.tensor([2] * len(TEXTS)))
    assert out.score.dtype == torch.float32 and torch.isfinite(out.score).all()


def test_head_shapes_and_kinds():
    hidden = torch.randn(3, 5, 64)
    for settings in HEADS.values():
        head = CriticHead(64, settings).eval()
        assert head(hidden).shape == (3, 5)
        assert head(hidden[:, -1]).shape == (3,)
        assert head(hidden.bfloat16()).dtype == torch.float32
    head = CriticHead(64, CONFIDENCE).eval()
    assert head(hidden, torch.randn(3, 5, 2)).shape == (3, 5)
    with pytest.raises(ValueError, match="confidence"):
        head(hidden)
    assert isinstance(CriticHead(64, HEADS["linear"]).net, torch.nn.Linear)
    assert len(CriticHead(64, HEADS["mlp"]).net) == 4
    with pytest.raises(ValueError, match="head.kind"):
        CriticHead(64, HeadSettings(kind="conv"))
    with pytest.raises(ValueError, match="head.window"):
        CriticHead(64, HeadSettings(kind="mlp", window=4))
    with pytest.raises(ValueError, match="attention_heads"):
        CriticHead(64, HeadSettings(kind="attention", hidden_dim=10, attention_heads=4, window=4))
    with pytest.raises(ValueError, match="head.tokens"):
        CriticHead(64, HeadSettings(kind="mlp", tokens=True), vocab_size=10)
    with pytest.raises(ValueError, match="vocabulary"):
        CriticHead(64, TOKENS)
    with pytest.raises(ValueError, match="token ids"):
        CriticHead(64, TOKENS, vocab_size=10)(torch.randn(2, 6, 64), torch.randn(2, 2), torch.ones(2, 6))
    with pytest.raises(ValueError, match="head.members"):
        CriticHead(64, dataclasses.replace(HEADS["mlp"], members=0))
    members = CriticHead(64, dataclasses.replace(CONFIDENCE, members=2)).eval()
    assert members.member_scores(hidden, torch.randn(3, 5, 2)).shape == (3, 5, 2)
    assert CriticHead(64, CONFIDENCE).member_scores(hidden, torch.randn(3, 5, 2)).shape == (3, 5, 1)


def test_a_window_head_scores_the_last_window_states_alone(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, WINDOW)
    ids = torch.tensor([tokenizer(max(TEXTS, key=len))["input_ids"]])
    assert ids.shape[1] > WINDOW.window + 1
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = critic(ids, mask, torch.tensor([PROMPT_TOKENS]))
        window = critic.final_hidden(ids, mask)[:, -WINDOW.window :]
        by_hand = critic.head(window, out.confidence, torch.ones(1, WINDOW.window, dtype=torch.bool))
        fewer = critic.head(window, out.confidence, torch.arange(WINDOW.window)[None] > 0)
    assert by_hand.item() == pytest.approx(out.score.item(), abs=TOL)
    assert fewer.item() != pytest.approx(by_hand.item(), abs=1e-6)  # every slot of the window is read


def test_window_layers_are_pytorchs_encoder_layers_and_load_their_weights():
    """The layers compute `nn.TransformerEncoder` (pre-norm, relu) with its parameter names, the top layer at the
    last slot alone: heads saved with PyTorch's layers load and score the same."""
    head = CriticHead(64, dataclasses.replace(TOKENS, layers=3), vocab_size=50).eval()
    width = TOKENS.hidden_dim
    layer = torch.nn.TransformerEncoderLayer(width, TOKENS.attention_heads, 4 * width, 0.1, batch_first=True, norm_first=True)
    reference = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    perturb(reference)
    head.layers.load_state_dict(reference.state_dict())  # same names, same shapes
    states, ids = torch.randn(4, TOKENS.window, 64), torch.randint(0, 50, (4, TOKENS.window))
    mask = torch.ones(4, TOKENS.window, dtype=torch.bool)
    mask[0, :3] = False  # a short row, left-padded
    with torch.no_grad():
        x = head.project(states) + head.position + head.embed(ids)
        whole = reference(x, src_key_padding_mask=~mask)[:, -1]
        assert (head._read_window(states, mask, ids) - whole).abs().max() <= TOL


def test_window_dropout_keeps_the_expected_value_and_drops_at_its_rate():
    from autocritic.model.window import dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    dropped = dropout(x, 0.1, training=True)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout(x, 0.1, training=False), x)


def test_a_tokens_head_reads_the_ids_of_its_window(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, TOKENS)
    ids = torch.tensor([tokenizer(max(TEXTS, key=len))["input_ids"]])
    mask = torch.ones_like(ids)
    every = torch.ones(1, TOKENS.window, dtype=torch.bool)
    with torch.no_grad():
        out = critic(ids, mask, torch.tensor([PROMPT_TOKENS]))
        window = critic.final_hidden(ids, mask)[:, -TOKENS.window :]
        by_hand = critic.head(window, out.confidence, every, ids[:, -TOKENS.window :])
        other = ids[:, -TOKENS.window :].clone()
        other[0, 0] = (other[0, 0] + 1) % critic.head.embed.num_embeddings  # the window's first token, as read
        changed = critic.head(window, out.confidence, every, other)
    assert by_hand.item() == pytest.approx(out.score.item(), abs=TOL)
    assert changed.item() != pytest.approx(by_hand.item(), abs=1e-6)
    with pytest.raises(ValueError, match="pass tokens"):
        critic.score_at(window, mask[:, -TOKENS.window :], torch.tensor([[TOKENS.window - 1]]), out.confidence[:, None])


def test_a_head_of_members_scores_the_mean_of_their_logits(tiny_backbone, tokenizer):
    critic = make_critic(tiny_backbone, MEMBERS)
    input_ids, mask = encode(tokenizer, TEXTS)
    prompt_lengths = torch.full((len(TEXTS),), PROMPT_TOKENS)
    with torch.no_grad():
        out = critic(input_ids, mask, prompt_lengths, return_members=True)
        alone = []
        for member in critic.head.members:  # each member as the whole head of a critic
            one = CriticModel(critic.backbone, head=member).eval()
            alone.append(one(input_ids, mask, prompt_lengths).score)
    alone = torch.stack(alone, -1)
    assert out.members.shape == (len(TEXTS), MEMBERS.members)
    assert (out.members - alone).abs().max() <= TOL
    assert (out.score - alone.mean(-1)).abs().max() <= TOL
    assert (alone[:, 0] - alone[:, 1]).abs().min() > 1e-4  # each member starts from its own initialisation
    with torch.no_grad():
        assert (critic(input_ids, mask, prompt_lengths).score - out.score).abs().max() <= TOL
    assert critic(input_ids, mask, prompt_lengths).members is None  # only when asked


# ---- export round trips ----
def export(model, tokenizer, path, tiny_backbone, head: HeadSettings, mode: str):
    return save_critic(
        model, tokenizer, path, str(tiny_backbone), head, template="{prompt}{response}", backbone_mode=mode
    )


@pytest.mark.parametrize("kind", WITH_CONFIDENCE)
def test_frozen_export_round_trip(tiny_backbone, tokenizer, tmp_path, kind):
    critic = make_critic(tiny_backbone, WITH_CONFIDENCE[kind])
    perturb(critic.head)
    before = scores(critic, tokenizer, TEXTS)
    out = export(critic, tokenizer, tmp_path / "export", tiny_backbone, WITH_CONFIDENCE[kind], "frozen")
    assert not (out / "backbone").exists() and not (out / "adapter").exists()  # a reference, not a copy
    assert not out.with_name("export.partial").exists()
    loaded = load_critic(out)
    assert loaded.template == "{prompt}{response}"
    assert loaded.config["backbone"]["mode"] == "frozen"
    assert not loaded.model.training
    assert (scores(loaded.model, loaded.tokenizer, TEXTS) - before).abs().max() <= TOL


def test_full_export_round_trip(tiny_backbone, tokenizer, tmp_path):
    critic = make_critic(tiny_backbone, HEADS["linear"])
    untouched = scores(critic, tokenizer, TEXTS)
    perturb(critic.backbone, scale=0.05)
    perturb(critic.head)
    before = scores(critic, tokenizer, TEXTS)
    out = export(critic, tokenizer, tmp_path / "export", tiny_backbone, HEADS["linear"], "full")
    assert (out / "backbone" / "config.json").is_file()
    loaded = load_critic(out)
    after = scores(loaded.model, loaded.tokenizer, TEXTS)
    assert (after - before).abs().max() <= TOL
    assert (after - untouched).abs().max() > 1e-3  # the fine-tuned backbone was saved, not the original


def test_lora_trains_adapters_and_the_critic_head_only(tiny_backbone):
    """peft matches modules_to_save by suffix: "head" must not catch the backbone's lm_head."""
    model = apply_lora(
        make_critic(tiny_backbone, HEADS["linear"]), LoraSettings(target_modules=["query_key_value"])
    )
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert [n for n in trainable if "lora_" not in n] == [
        "base_model.model.head.net.bias",
        "base_model.model.head.net.weight",
    ]
    assert len([n for n in trainable if "lora_" in n]) == 4  # A and B in 2 blocks
    assert type(model.get_base_model().backbone.lm_head) is torch.nn.Linear


def test_lora_targets_the_model_lacks_are_a_config_error_naming_the_key(tiny_backbone):
    with pytest.raises(ConfigError, match=r"q_proj.*Set peft.target_modules to linear layer names"):
        apply_lora(make_critic(tiny_backbone, HEADS["linear"]), LoraSettings(target_modules=["q_proj"]))


@pytest.mark.parametrize("kind", ["mlp", "confidence"])
def test_lora_export_round_trip_merged_and_unmerged(tiny_backbone, tokenizer, tmp_path, kind):
    head_settings = WITH_CONFIDENCE[kind]
    critic = make_critic(tiny_backbone, head_settings)
    model = apply_lora(
        critic, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["query_key_value", "dense"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("base_model.model.head.") for n in trainable)
    assert {f"base_model.model.head.{n}" for n, _ in critic.head.named_parameters()} <= trainable
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or ".head." in name:
                p.add_(0.3 * torch.randn_like(p))
    model.eval()
    head_before = head_state(model)
    before = scores(model, tokenizer, TEXTS)

    out = export(model, tokenizer, tmp_path / "export", tiny_backbone, head_settings, "lora")
    assert (out / "adapter").is_dir()
    saved_head = load_file(str(out / HEAD_NAME))
    assert saved_head.keys() == head_before.keys()
    assert all(torch.equal(saved_head[k], head_before[k]) for k in head_before)

    for merge in (True, False):
        loaded = load_critic(out, merge=merge)
        assert isinstance(loaded.model, CriticModel) == merge  # merged: LoRA folded in, no peft wrapper left
        reloaded_head = head_state(loaded.model)
        assert all(torch.equal(reloaded_head[k], head_before[k]) for k in head_before)
        after = scores(loaded.model, loaded.tokenizer, TEXTS)
        assert (after - before).abs().max() <= TOL, f"merge={merge}"

    plain = make_critic(tiny_backbone, head_settings)
    plain.head.load_state_dict(head_before)
    assert (scores(plain, tokenizer, TEXTS) - before).abs().max() > 1e-4  # the adapter matters


def test_export_errors_are_checkpoint_errors(tiny_backbone, tokenizer, tmp_path):
    with pytest.raises(CheckpointError, match="critic_config.json is missing"):
        load_critic(tmp_path)
    critic = make_critic(tiny_backbone, HEADS["linear"])
    out = export(critic, tokenizer, tmp_path / "export", tiny_backbone, HEADS["linear"], "frozen")
    narrower = FalconForCausalLM(FalconConfig(vocab_size=60, hidden_size=32, num_attention_heads=4))
    with pytest.raises(CheckpointError, match="does not fit this backbone"):
        load_head(out, narrower, HEADS["linear"])
    config = json.loads((out / "critic_config.json").read_text())
    (out / "critic_config.json").write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        read_critic_config(out)


def test_export_replaces_an_older_one(tiny_backbone, tokenizer, tmp_path):
    first = make_critic(tiny_backbone, HEADS["linear"], seed=1)
    second = make_critic(tiny_backbone, HEADS["linear"], seed=2)
    export(first, tokenizer, tmp_path / "export", tiny_backbone, HEADS["linear"], "frozen")
    out = export(second, tokenizer, tmp_path / "export", tiny_backbone, HEADS["linear"], "frozen")
    loaded = load_critic(out)
    assert (
        scores(loaded.model, loaded.tokenizer, TEXTS) - scores(second, tokenizer, TEXTS)
    ).abs().max() <= TOL
