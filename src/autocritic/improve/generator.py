"""Fine-tune the generator (the causal LM under the critic) on the answers a round kept, with replay documents.

The loss is the LM loss on the answer tokens only (the few-shot prompt is context), plus `replay_weight` x the LM
loss on a batch of replay documents each step (data/replay.py): the skills the answers do not exercise (dialogue,
summaries, ReAct) are not worn away. `mode="lora"` (the default) trains a LoRA adapter (peft) and merges it into the
weights at the end; `mode="full"` trains every weight. Either way a round's generator is a whole causal LM, and the
rounds after it (sampling, the critic refresh, the export) read it the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocritic.data.replay import collate_replay
from autocritic.model.adapter import with_new_lora
from autocritic.settings import at_least, positive

GENERATOR_MODES = ("full", "lora")
MODE_LR = {"full": 1.0e-4, "lora": 1.0e-3}  # full: 5e-4 already makes the model worse (docs/experiments.md)


@dataclass(frozen=True)
class GeneratorSettings:
    epochs: int = 2
    lr: float | None = None  # None: the mode's own (MODE_LR)
    batch_size: int = 16
    weight_decay: float = 0.0
    replay_batch_size: int = 8
    replay_weight: float = 1.0
    replay_documents: int = 2000  # of the replay file: enough for the steps of a round
    max_length: int = 384
    answer_end: str = "\n"  # appended to each answer: the stop string that ended it, so the model still stops
    mode: str = "lora"  # lora | full
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None  # linear layers the adapter wraps; None: every one but the output

    def __post_init__(self) -> None:
        if self.mode not in GENERATOR_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {list(GENERATOR_MODES)}")
        if self.lr is None:
            object.__setattr__(self, "lr", MODE_LR[self.mode])
        positive(self, "lr", "lora_alpha")
        at_least(self, 1, "epochs", "batch_size", "replay_batch_size", "max_length", "lora_r")
        at_least(self, 0, "weight_decay", "replay_weight", "replay_documents", "lora_dropout")
        if self.lora_dropout >= 1:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be below 1 (a probability)")
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError("lora_targets=[] wraps nothing: name linear layers, or null for every one but the output")


def with_lora(model: PreTrainedModel, settings: GeneratorSettings) -> PreTrainedModel:
    """`model` under a fresh LoRA adapter (a peft model whose base weights are frozen)."""
    config = {"r": settings.lora_r, "lora_alpha": settings.lora_alpha, "lora_dropout": settings.lora_dropout}
    config["target_modules"] = "all-linear" if settings.lora_targets is None else list(settings.lora_targets)
    return with_new_lora(
        model,
        config,
        "Set improve.generator.lora_targets to linear layer names of this model (Falcon: [query_key_value, dense]; "
        "Llama: [q_proj, v_proj]), or improve.generator.mode=full.",
        task_type="CAUSAL_LM",
    )


def encode_answers(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str], end: str, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(token ids, labels) of prompt + answer + end, tokenized in one piece as the critic reads it; the prompt's
    tokens are labelled -100."""
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = tokenizer(prompt + answer + end, add_special_tokens=False)["input_ids"]
        labels = [-100] * prompt_length + ids[prompt_length:]
        rows.append((ids[-max_length:], labels[-max_length:]))  # a long prompt loses its start, never the answer
    return rows


def lm_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["lm_labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def fine_tune_generator(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[list[int], list[int]]],
    replay: Sequence[tuple[list[int], list[int]]],
    settings: GeneratorSettings,
    seed: int,
) -> tuple[PreTrainedModel, dict]:
    """The trained generator (`model` itself trained in place, or with `mode="lora"` `model` with the adapter merged
    into its weights), and the first and last epochs' mean answer loss, the step count and the trained parameters."""
    if settings.mode == "lora":
        model = with_lora(model, settings)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rng = random.Random(f"{seed}|improve-generator")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay
    )
    model.train()
    epoch_losses, steps = [], 0
    for _ in range(settings.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            batch = collate_replay([rows[i] for i in order[start : start + settings.batch_size]], pad)
            loss = lm_loss(model, batch)
            losses.append(loss.item())
            if replay and settings.replay_weight > 0:
                documents = [replay[rng.randrange(len(replay))] for _ in range(settings.replay_batch_size)]
                loss = loss + settings.replay_weight * lm_loss(model, collate_replay(documents, pad))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
        epoch_losses.append(sum(losses) / max(1, len(losses)))
    model.eval()
    if settings.mode == "lora":
        model = model.merge_and_unload()
    facts = {
        "answer_loss_first_epoch": round(epoch_losses[0], 4),
        "answer_loss_last_epoch": round(epoch_losses[-1], 4),
        "steps": steps,
        "mode": settings.mode,
        "trained_parameters": trained,
    }
    return model, facts
