"""Test helpers: compose the real train config shrunk for the tiny Falcon, encode batches, snapshot parameters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from autocritic.inference.generation import GenerationSettings, Sample, find_stop

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides or [])


def tiny_overrides(backbone: Path, data: dict[str, Path], root: Path, run: str = "run") -> list[str]:
    """The real config, pointed at the tiny Falcon and tiny files, everything written under `root`."""
    return [
        f"model.name_or_path={backbone}",
        "model.offline_default=false",
        "data=files",
        f"data.train_files=[{data['train']}]",
        f"data.val_files=[{data['val']}]",
        "data.template='{prompt}{response}'",
        "head=mlp",  # the default checker has its own tests; the rest run on the cheaper head
        "data.max_length=32",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "logger=none",
        "progress_bar=none",
        "trainer.accelerator=cpu",
        f"paths.outputs={root / 'outputs'}",
        f"paths.cache={root / 'cache'}",
        f"paths.run_dir={root / 'outputs' / '${phase.name}' / run}",
    ]


def resolved(cfg: DictConfig) -> DictConfig:
    """paths.run_dir refers to ${phase.name}: resolve it the way Hydra's output dir would be."""
    OmegaConf.resolve(cfg)
    return cfg


def encode(tokenizer, texts: list[str], side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask, padded on `side`."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    length = max(map(len, ids))
    input_ids = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        cols = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        input_ids[row, cols] = torch.tensor(seq)
        mask[row, cols] = 1
    return input_ids, mask


PROMPT_TOKENS = 3  # the first tokens of each of TEXTS count as its prompt (read by a confidence head)


@torch.no_grad()
def scores(model: torch.nn.Module, tokenizer, texts: list[str], side: str = "right") -> torch.Tensor:
    was_training = model.training
    model.eval()
    input_ids, mask = encode(tokenizer, texts, side)
    prompt_lengths = torch.full((len(texts),), PROMPT_TOKENS)
    out = model(input_ids=input_ids, attention_mask=mask, prompt_lengths=prompt_lengths).score
    model.train(was_training)
    return out


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, bool]:
    return {name: not torch.equal(before[name], p.detach()) for name, p in module.named_parameters()}


TEXTS = ["Q: 1+2=? A: 3", "Q: 12+9=? A: 21", "Q: 7*8=? A: 54 and more text", "ab"]


def tiny_pretrain_settings(**changes):
    """A pretraining run of seconds: the offline recipe at toy size."""
    import dataclasses

    from autocritic.offline.pretrain import PretrainSettings

    tiny = PretrainSettings(
        tokenizer_documents=300,
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        max_steps=20,
        draws=1,
    )
    return dataclasses.replace(tiny, **changes)


class ScriptedGenerator:
    """A `TextGenerator` that replies with scripted texts in order (cut at the stop strings like the real one).
    For deterministic tests of chains and agents; `prompts` records what it was asked."""

    def __init__(self, replies: Sequence[str], score: float = 0.0):
        self.replies = list(replies)
        self.score = score
        self.prompts: list[str] = []

    def _next(self, prompt: str, settings: GenerationSettings) -> Sample:
        self.prompts.append(prompt)
        if not self.replies:
            raise RuntimeError("ScriptedGenerator ran out of replies")
        text = self.replies.pop(0)
        cut = find_stop(text, settings.stop)
        reason = "stop" if cut is not None else "eos"
        return Sample(text[:cut] if cut is not None else text, self.score, [], reason)

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None, **overrides
    ) -> list[list[Sample]]:
        settings = replace(settings or GenerationSettings(), **overrides)
        return [[self._next(p, settings) for _ in range(settings.n)] for p in prompts]

    def stream(
        self, prompt: str, settings: GenerationSettings | None = None, **overrides
    ) -> Iterator[str | Sample]:
        sample = self._next(prompt, replace(settings or GenerationSettings(), **overrides))
        yield from (sample.text[i : i + 3] for i in range(0, len(sample.text), 3))
        yield sample
