"""Fine-tune the generator (the causal LM under the critic) on the answers a round kept, with replay documents.

The loss is the LM loss on the answer tokens only (the few-shot prompt is context), plus `replay_weight` x the LM
loss on a batch of replay documents each step (data/replay.py): the skills the answers do not exercise (dialogue,
summaries, ReAct) are not worn away. All weights train (a tiny model: a full copy per round costs little).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocritic.data.replay import collate_replay
from autocritic.settings import at_least, positive


@dataclass(frozen=True)
class GeneratorSettings:
    epochs: int = 2
    lr: float = 1.0e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    replay_batch_size: int = 8
    replay_weight: float = 1.0
    replay_documents: int = 2000  # of the replay file: enough for the steps of a round
    max_length: int = 384
    answer_end: str = "\n"  # appended to each answer: the stop string that ended it, so the model still stops

    def __post_init__(self) -> None:
        positive(self, "lr")
        at_least(self, 1, "epochs", "batch_size", "replay_batch_size", "max_length")
        at_least(self, 0, "weight_decay", "replay_weight", "replay_documents")


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
) -> dict:
    """Train `model` in place; returns the first and last epochs' mean answer loss and the step count."""
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
    return {"answer_loss_first_epoch": round(epoch_losses[0], 4), "answer_loss_last_epoch": round(epoch_losses[-1], 4), "steps": steps}
