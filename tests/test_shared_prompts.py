"""Shared-prompt batches (data.share_prompts): the same losses and gradients as one row per sequence, each
prompt run once; the sampler keeps a prompt's rows together."""

from __future__ import annotations

import pytest
import torch
from test_feature_cache import BACKBONES

from autocritic.data.datamodule import CriticDataModule, DataSettings, EpochShuffle, prompt_groups
from autocritic.model.backbone import LoraSettings, apply_lora, load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel
from autocritic.model.head import HeadSettings
from autocritic.training.module import CriticModule, OptimSettings
from autocritic.training.objectives import ObjectiveSettings


def rows_with_shared_prompts(schema: str) -> list[dict]:
    prompts = [f"Q: {a}+{a + 1}=?\nA:" for a in range(6)] + ["Q: 12+3=?\nA:"]
    if schema == "pairwise":
        return [
            {"prompt": p, "chosen": f" {2 * a + 1}", "rejected": f" {2 * a + k}"}
            for a, p in enumerate(prompts)
            for k in (0, 3)
        ]
    return [{"prompt": p, "response": f" {2 * a + k}", "label": int(k == 1)} for a, p in enumerate(prompts) for k in range(1 + a % 4)]


def datamodule_of(rows, schema, tiny_backbone, tmp_path, share: bool) -> CriticDataModule:
    from conftest import write_jsonl

    path = write_jsonl(tmp_path / f"{schema}.jsonl", rows)
    settings = DataSettings(schema=schema, train_files=[str(path)], val_files=[str(path)], batch_size=64, share_prompts=share)
    datamodule = CriticDataModule(settings, load_tokenizer(str(tiny_backbone)))
    datamodule.setup()
    return datamodule


# No dropout: the two sides would draw different masks. The window (6 states) reaches back into the prompts.
HEADS = {
    "mlp": HeadSettings(kind="mlp", dropout=0.0, confidence=True),
    "window": HeadSettings(kind="attention", hidden_dim=16, attention_heads=2, window=6, dropout=0.0, confidence=True),
    "tokens": HeadSettings(
        kind="attention", hidden_dim=16, attention_heads=2, window=6, dropout=0.0, confidence=True, tokens=True
    ),
}


def critic_of(kind: str, tiny_backbone, lora: bool, head: str = "mlp") -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = load_backbone(str(tiny_backbone)) if kind == "tiny-falcon" else BACKBONES[kind]()
    critic = CriticModel(backbone, head_settings=HEADS[head])
    if lora:
        critic = apply_lora(critic, LoraSettings(dropout=0.0, target_modules=["query_key_value"] if kind == "tiny-falcon" else ["q_proj", "v_proj"]))
    return critic


def loss_and_grads(module: CriticModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = module.step(batch, "train")
    loss.backward()
    wrapped = "._checkpoint_wrapped_module"  # torch's activation checkpointing renames the layers it wraps
    return loss.detach(), {n.replace(wrapped, ""): p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "kind,schema,objective,head",
    [
        ("tiny-falcon", "pointwise", ObjectiveSettings(kind="bce", lm_weight=1.0), "mlp"),
        ("tiny-falcon", "pointwise", ObjectiveSettings(kind="bce", value_weight=1.0), "mlp"),
        ("tiny-falcon", "pairwise", ObjectiveSettings(kind="pairwise", lm_weight=1.0), "mlp"),
        ("llama", "pointwise", ObjectiveSettings(kind="bce", lm_weight=1.0), "mlp"),
        ("tiny-falcon", "pointwise", ObjectiveSettings(kind="bce", value_weight=1.0), "window"),
        ("tiny-falcon", "pointwise", ObjectiveSettings(kind="bce", value_weight=1.0), "tokens"),
    ],
)
@pytest.mark.parametrize("checkpointing", [None, "transformers", "torch"])
def test_shared_batch_gives_the_losses_and_gradients_of_plain_rows(
    kind, schema, objective, head, checkpointing, tiny_backbone, tmp_path
):
    rows = rows_with_shared_prompts(schema)
    plain = datamodule_of(rows, schema, tiny_backbone, tmp_path, share=False)
    shared = datamodule_of(rows, schema, tiny_backbone, tmp_path, share=True)
    items = plain.encoded["train"]
    plain_batch, shared_batch = plain.collate_tokens(items), shared.collate_shared(items)
    assert shared_batch["prefix_ids"].shape[0] == 7  # one row per distinct prompt
    assert shared_batch["answer_ids"].shape[0] == plain_batch["input_ids"].shape[0]
    module = CriticModule(critic_of(kind, tiny_backbone, lora=True, head=head), objective, OptimSettings(), backbone_frozen=False)
    module.train()
    plain_loss, plain_grads = loss_and_grads(module, plain_batch)
    # Checkpointing runs each layer again in the backward pass: the prompt's keys must not be cached twice.
    backbone = module.critic.base_model.model.backbone
    if checkpointing == "transformers":  # model.gradient_checkpointing=true
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert sum(getattr(m, "gradient_checkpointing", False) for m in backbone.modules()) >= 2
    elif checkpointing == "torch":  # trainer=fsdp's activation_checkpointing_policy
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
        from transformers.modeling_layers import GradientCheckpointingLayer

        apply_activation_checkpointing(backbone, check_fn=lambda m: isinstance(m, GradientCheckpointingLayer))
        assert "_checkpoint_wrapped_module" in str(dict(backbone.named_modules()).keys())
    shared_loss, shared_grads = loss_and_grads(module, shared_batch)
    assert torch.allclose(plain_loss, shared_loss, atol=1e-5)
    assert plain_grads.keys() == shared_grads.keys()
    assert any("lora_" in name for name in plain_grads)  # the backbone really trains through the prompt
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, shared_grads[name], atol=1e-5, rtol=1e-4), name


def test_answer_labels_are_the_response_tokens_of_good_rows(tiny_backbone, tmp_path):
    rows = rows_with_shared_prompts("pointwise")
    datamodule = datamodule_of(rows, "pointwise", tiny_backbone, tmp_path, share=True)
    items = datamodule.encoded["train"]
    batch = datamodule.collate_shared(items)
    tokenizer = datamodule.tokenizer
    for row, source in enumerate(rows):  # encoded in the order of the rows
        labels = batch["answer_labels"][row]
        taught = tokenizer.decode(labels[labels != -100].tolist())
        assert taught == (source["response"] if source["label"] else "")
        prompt = tokenizer.decode(batch["prefix_ids"][batch["repeat"][row]][batch["prefix_mask"][batch["repeat"][row]].bool()].tolist())
        assert prompt == source["prompt"]


def test_a_row_without_a_prompt_falls_back_to_plain_rows(tiny_backbone, tmp_path):
    rows = rows_with_shared_prompts("pointwise")[:3] + [{"prompt": "", "response": "Q: 1+1=? A: 2", "label": 1}]
    datamodule = datamodule_of(rows, "pointwise", tiny_backbone, tmp_path, share=True)
    batch = datamodule.collate_shared(datamodule.encoded["train"])
    assert "input_ids" in batch and "prefix_ids" not in batch


def test_loaders_keep_a_prompts_rows_together_and_each_row_once(tiny_backbone, tmp_path):
    rows = rows_with_shared_prompts("pointwise")
    datamodule = datamodule_of(rows, "pointwise", tiny_backbone, tmp_path, share=True)
    items = datamodule.encoded["train"]
    groups = prompt_groups(items)
    assert len(groups) == 7 and sorted(i for g in groups for i in g) == list(range(len(items)))
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    lengths = [len(item["ids"][0]) for item in items]
    sampler = EpochShuffle(len(items), seed=3, lengths=lengths, batch_size=2, megabatch=2, groups=groups)
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(items)))
        runs = [group_of[i] for k, i in enumerate(order) if k == 0 or group_of[i] != group_of[order[k - 1]]]
        assert len(runs) == len(groups)  # each group is one contiguous run
        orders.append(order)
        sampler.set_epoch(epoch)
        assert list(sampler) == order  # drawn from (seed, epoch) alone
    assert orders[0] != orders[1]
    evaluation = datamodule.loader("val", shuffle=False)
    assert [i for i in evaluation.sampler] == [i for g in groups for i in g]


def test_singleton_groups_keep_the_plain_shuffle():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    plain = EpochShuffle(len(lengths), seed=1, lengths=lengths, batch_size=2, megabatch=2)
    grouped = EpochShuffle(len(lengths), seed=1, lengths=lengths, batch_size=2, megabatch=2, groups=[[i] for i in range(len(lengths))])
    assert list(plain) == list(grouped)


def test_gradient_checkpointing_keeps_shared_prompts():
    from helpers import compose_train

    from autocritic.training.run import data_settings

    assert data_settings(compose_train(["phase=finetune"])).share_prompts
    assert data_settings(compose_train(["phase=finetune", "model=falcon-7b-instruct"])).share_prompts  # checkpointed
    assert not data_settings(compose_train(["phase=finetune", "data.share_prompts=false"])).share_prompts


def test_rows_with_distinct_prompts_stay_plain(tiny_backbone, tmp_path):
    rows = [{"prompt": f"Q: {a}+1=?\nA:", "response": f" {a + 1}", "label": 1} for a in range(8)]
    datamodule = datamodule_of(rows, "pointwise", tiny_backbone, tmp_path, share=True)
    assert "input_ids" in next(iter(datamodule.loader("train", shuffle=True)))
    shared = datamodule_of(rows_with_shared_prompts("pointwise"), "pointwise", tiny_backbone, tmp_path, share=True)
    assert "prefix_ids" in next(iter(shared.loader("train", shuffle=True)))
