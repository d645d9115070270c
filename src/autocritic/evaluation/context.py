"""What every suite receives: the generator under test, the held-out problems, token counting, where plots go.

Problems come from `offline.tasks.make_splits`: the split of a problem is a hash of its key, so TEST problems
were never trained on (neither by the backbone nor by the critic), whatever the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocritic.inference.chat import CriticChatModel
from autocritic.inference.generation import CriticGenerator, GenerationSettings, Sample, TextGenerator
from autocritic.inference.llm import CriticLLM
from autocritic.offline.tasks import Problem, make_splits


def word_count(text: str) -> int:
    return len(text.split())


@dataclass
class EvalContext:
    generator: TextGenerator
    seed: int = 0
    out_dir: Path | None = None  # plots are written here; None: no plots
    count_tokens: Callable[[str], int] = word_count
    _splits: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_generator(
        cls, generator: TextGenerator, seed: int = 0, out_dir: Path | None = None
    ) -> EvalContext:
        """Token counts with the model's own tokenizer (the prompt as the critic's template renders it)."""
        count = word_count
        if isinstance(generator, CriticGenerator):

            def count(text: str) -> int:
                return len(generator.tokenizer(generator.template.render_prompt(text))["input_ids"])

        return cls(generator, seed, out_dir, count)

    def splits(self, family: str, test: int, train: int = 0) -> dict[str, list[Problem]]:
        """TEST (and TRAIN, e.g. a few-shot pool) problems of one family, cached. Sizes only cut the lists: a
        smaller request is a prefix of a larger one, so a suite sees the same problems at any size."""
        key = (family, test, train)
        if key not in self._splits:
            self._splits[key] = make_splits(self.seed, train=train, val=0, test=test, families=[family])
        return self._splits[key]

    def test_problems(self, family: str, n: int) -> list[Problem]:
        return self.splits(family, n)["test"]

    def llm(self, generator: TextGenerator | None = None, **fields: Any) -> CriticLLM:
        return CriticLLM(generator=generator or self.generator, **fields)

    def chat(self, generator: TextGenerator | None = None, **fields: Any) -> CriticChatModel:
        return CriticChatModel(generator=generator or self.generator, **fields)

    def plot_path(self, name: str) -> Path | None:
        return None if self.out_dir is None else Path(self.out_dir) / name


class RecordingGenerator:
    """A `TextGenerator` that passes everything to `inner` and keeps each prompt (to count prompt tokens)."""

    def __init__(self, inner: TextGenerator):
        self.inner = inner
        self.prompts: list[str] = []

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None, **overrides
    ) -> list[list[Sample]]:
        self.prompts.extend(prompts)
        return self.inner.generate(prompts, settings, **overrides)

    def stream(self, prompt: str, settings: GenerationSettings | None = None, **overrides):
        self.prompts.append(prompt)
        yield from self.inner.stream(prompt, settings, **overrides)
