"""The feature cache runs each shared prompt once: the states and the confidence features equal one plain
forward per sequence."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM

from autocritic.data.datamodule import CriticDataModule, DataSettings
from autocritic.model.backbone import load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel, feature_width
from autocritic.model.head import HeadSettings
from autocritic.training.feature_cache import compute_features, shared_prefix_features


def confidence_critic(backbone) -> CriticModel:
    return CriticModel(backbone.eval(), head_settings=HeadSettings(confidence=True))


def plain_features(critic: CriticModel, sequences) -> torch.Tensor:
    """Final state and confidence (response = positions >= prompt length) of one plain forward per sequence."""
    rows = []
    with torch.no_grad():
        for ids, prompt_len in sequences:
            out = critic(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([prompt_len]))
            rows.append(torch.cat([out.hidden, out.confidence], dim=-1))
    return torch.cat(rows)


def sequences_with_shared_prompts(vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Prompts of several lengths, 1-5 answers each; plus the edge cases: no prompt, prompt = whole sequence."""
    rng = random.Random(seed)
    out = []
    for _ in range(7):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(3, 12))]
        for _ in range(rng.randint(1, 5)):
            out.append((prompt + [rng.randrange(1, vocab) for _ in range(rng.randint(1, 4))], len(prompt)))
    out.append(([rng.randrange(1, vocab) for _ in range(5)], 0))
    out.append(([rng.randrange(1, vocab) for _ in range(6)], 6))
    rng.shuffle(out)
    return out


BACKBONES = {
    "falcon-multi-query": lambda: FalconForCausalLM(
        FalconConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=False)
    ),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2,
        )
    ),
}


@pytest.mark.parametrize("kind", ["tiny-falcon", *BACKBONES])
@pytest.mark.parametrize("batch_rows", [1, 4, 64])
def test_shared_prefix_features_equal_plain_forward(kind, batch_rows, tiny_backbone):
    torch.manual_seed(0)
    backbone = load_backbone(str(tiny_backbone)) if kind == "tiny-falcon" else BACKBONES[kind]()
    critic = confidence_critic(backbone)
    sequences = sequences_with_shared_prompts(backbone.config.vocab_size)
    with torch.no_grad():
        shared = shared_prefix_features(critic, sequences, torch.device("cpu"), batch_rows, pad_id=0)
    expected = plain_features(critic, sequences)
    assert expected[:, -2:].abs().sum() > 0  # the confidence features are really there
    assert (shared - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("schema", ["pointwise", "pairwise"])
def test_compute_features_keeps_item_order_and_pairs(schema, tiny_backbone, tmp_path):
    from conftest import write_jsonl

    prompts = [f"Q: {a}+{a}=?\nA:" for a in range(5)]
    if schema == "pairwise":
        rows = [{"prompt": p, "chosen": f" {2 * a}", "rejected": f" {2 * a + 1}"} for a, p in enumerate(prompts)]
    else:
        rows = [{"prompt": p, "response": f" {a + k}", "label": k % 2} for a, p in enumerate(prompts) for k in range(3)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    tokenizer = load_tokenizer(str(tiny_backbone))
    datamodule = CriticDataModule(
        DataSettings(schema=schema, train_files=[str(path)], val_files=[str(path)], eval_batch_size=4), tokenizer
    )
    datamodule.setup()
    critic = confidence_critic(load_backbone(str(tiny_backbone)))
    features = compute_features(critic, datamodule, "train", torch.device("cpu"))
    items = datamodule.encoded["train"]
    width = critic.backbone.config.hidden_size + 2
    assert features.shape == (len(items), 2 if schema == "pairwise" else 1, width)
    for k in range(features.shape[1]):
        expected = plain_features(critic, [(item["ids"][k], item["prompt_len"][k]) for item in items])
        assert (features[:, k] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("window", [2, 6, 20])  # reaching into the prompts; past their start (padding)
@pytest.mark.parametrize("batch_rows", [1, 64])
@pytest.mark.parametrize("tokens", [False, True], ids=["states", "tokens"])
def test_window_features_score_as_the_plain_forward(window, batch_rows, tokens, tiny_backbone):
    """A window head's cached features (the last `window` states, their mask and, for a head reading them, their
    token ids) give the scores of one plain forward per sequence, also when the window reaches back into a shared
    prompt."""
    torch.manual_seed(0)
    settings = HeadSettings(
        kind="attention", hidden_dim=16, attention_heads=2, window=window, confidence=True, tokens=tokens
    )
    critic = CriticModel(load_backbone(str(tiny_backbone)).eval(), head_settings=settings).eval()
    sequences = sequences_with_shared_prompts(critic.config.vocab_size)
    with torch.no_grad():
        features = shared_prefix_features(critic, sequences, torch.device("cpu"), batch_rows, pad_id=0)
        cached = critic.score_features(features)
        plain = torch.cat(
            [critic(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([n])).score for ids, n in sequences]
        )
    assert features.shape == (len(sequences), feature_width(critic.config.hidden_size, window, tokens))
    assert (cached - plain).abs().max() <= 1e-5
    assert plain.std() > 1e-3  # the sequences are not scored alike
