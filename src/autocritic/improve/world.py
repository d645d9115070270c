"""The offline world's rounds: arithmetic problems in three disjoint sets, the tiny backbone and its replay mix.

    improving   questions only: the generator samples, the filter keeps, the generator trains (labels unread)
    labelled    questions with answers: few-shot examples, and the critic's refresh data (checked answers)
    held out    the rerank suite's test problems (offline.generate's seed): every round is measured on them

The improving and labelled sets are drawn with their own seed, away from the critic data's problems (the
round-0 critic was trained on answers to those), and never share a question with the held-out set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from autocritic.data.replay import encode_documents, read_replay_files
from autocritic.data.template import Template
from autocritic.errors import ConfigError
from autocritic.evaluation.rerank import mean_logprob
from autocritic.formats import ARITHMETIC_STOP
from autocritic.improve.critic import refresh_critic
from autocritic.improve.filters import Candidate, Kept
from autocritic.improve.generator import GeneratorSettings, encode_answers, fine_tune_generator
from autocritic.improve.measure import measure_export
from autocritic.inference.generation import CriticGenerator, GenerationSettings
from autocritic.model.backbone import unwrap
from autocritic.model.complete import complete
from autocritic.model.export import load_critic
from autocritic.offline.generate import label_split
from autocritic.offline.labelling import extract_answer, is_right, label_offline
from autocritic.offline.tasks import Problem, few_shot_prompts, make_splits
from autocritic.settings import at_least, positive


@dataclass(frozen=True)
class ProblemSettings:
    seed: int = 7  # of the improving and labelled sets (the critic data uses offline.generate.seed)
    improving: int = 10000
    labelled: int = 2000
    val_fraction: float = 0.2  # of the labelled problems: the critic refresh's validation rows
    held_out: int = 1000
    held_out_seed: int = 0  # offline.generate.seed: the rerank suite's test problems
    shots: int = 2

    def __post_init__(self) -> None:
        if min(self.improving, self.labelled, self.held_out) < 1:
            raise ConfigError("improve.problems: improving, labelled and held_out must each be at least 1.")
        if self.shots < 0:
            raise ConfigError(f"improve.problems.shots={self.shots} must be ≥ 0 (worked examples in each prompt).")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"improve.problems.val_fraction={self.val_fraction} must lie between 0 and 1.")


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8
    max_new_tokens: int = 12
    batch_size: int = 128  # generated rows per forward
    eval_samples: int = 8  # K of the held-out measurement (majority@K, pass@K, best-of-K)
    eval_seed: int = 0
    max_pairs_per_problem: int = 4

    def __post_init__(self) -> None:
        positive(self, "temperature")  # the loop samples: 0 would be K copies of the greedy answer
        at_least(self, 1, "max_new_tokens", "batch_size", "eval_samples", "max_pairs_per_problem")


def problem_sets(settings: ProblemSettings) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """(improving, labelled, held out): disjoint by question."""
    arithmetic = ("arithmetic",)  # the family the checker and the critic know
    held_out = make_splits(settings.held_out_seed, train=0, val=0, test=settings.held_out, families=arithmetic)["test"]
    taken = {p.key for p in held_out}
    drawn = make_splits(settings.seed, train=settings.improving + settings.labelled + settings.held_out, val=0, test=0, families=arithmetic)["train"]
    fresh = [p for p in drawn if p.key not in taken]
    improving, labelled = fresh[: settings.improving], fresh[settings.improving : settings.improving + settings.labelled]
    if len(labelled) < settings.labelled:
        raise ConfigError("improve.problems asks for more problems than the offline world holds apart: ask for fewer.")
    return improving, labelled, held_out


class ModelSteps:
    """The steps every world shares: sampling scored answers from an export, and fine-tuning its generator on the
    kept ones. Prompts are questions; the export's template renders them, as the critic saw them in training."""

    sampling: SamplingSettings
    generator: GeneratorSettings
    replay_files: list[str]
    stop: tuple[str, ...]
    _replay: list | None = None

    def sample(self, export: Path, prompts: Sequence[str], samples: int, seed: int) -> list[list[Candidate]]:
        loaded = load_critic(export)
        generator = CriticGenerator(loaded.model, loaded.tokenizer, loaded.template, batch_size=self.sampling.batch_size)
        settings = GenerationSettings(
            max_new_tokens=self.sampling.max_new_tokens, stop=self.stop, seed=seed, do_sample=True,
            temperature=self.sampling.temperature, top_k=0, top_p=1.0, n=samples, return_logprobs=True,
        )
        return [
            [Candidate(s.text, s.score, mean_logprob(s) if s.logprobs else None) for s in row]
            for row in generator.generate(prompts, settings)
        ]

    def replay(self, tokenizer) -> list:
        if self._replay is None:
            documents = read_replay_files(self.replay_files)[: self.generator.replay_documents] if self.replay_files else []
            self._replay = encode_documents(documents, tokenizer, self.generator.max_length)
        return self._replay

    def fine_tune(self, export: Path, kept: Sequence[Kept], prompts: Sequence[str], out: Path, seed: int) -> Path:
        loaded = load_critic(export)
        model, tokenizer, template = unwrap(loaded.model).backbone, loaded.tokenizer, Template(loaded.template)
        model.requires_grad_(True)
        rows = encode_answers(
            tokenizer, [template.render_prompt(prompts[k.problem]) for k in kept], [k.text for k in kept],
            self.generator.answer_end, self.generator.max_length,
        )
        model, facts = fine_tune_generator(model, tokenizer, rows, self.replay(tokenizer), self.generator, seed)
        target = out / "generator"
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        (out / "generator.json").write_text(json.dumps(facts | {"answers": len(rows)}, indent=2) + "\n")
        return target

    def sample_labelled(self, generator: Path, prompts: Sequence[str], seed: int) -> list[list[str]]:
        """The new generator's answers to the labelled questions (rendered prompts), to be checked."""
        tokenizer = AutoTokenizer.from_pretrained(generator)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(generator).eval()
        return complete(
            model, tokenizer, prompts, max_new_tokens=self.sampling.max_new_tokens, stop=self.stop,
            temperature=self.sampling.temperature, num_samples=8, batch_size=self.sampling.batch_size, seed=seed,
        )


class OfflineWorld(ModelSteps):
    def __init__(
        self,
        problems: ProblemSettings,
        sampling: SamplingSettings,
        generator: GeneratorSettings,
        replay_files: Sequence[str],
        critic_overrides: Sequence[str],
    ):
        self.settings, self.sampling, self.generator = problems, sampling, generator
        self.improving, self.labelled, self.held_out = problem_sets(problems)
        self.replay_files, self.critic_overrides = list(replay_files), list(critic_overrides)
        self.stop = tuple(ARITHMETIC_STOP)
        # Few-shot examples come from the labelled set: an improving question's own answer is never shown.
        self._improving_prompts = few_shot_prompts(self.improving, self.labelled, problems.shots, problems.seed)
        self.labelled_prompts = few_shot_prompts(self.labelled, self.labelled, problems.shots, problems.seed + 1)
        self.held_out_prompts = few_shot_prompts(self.held_out, self.labelled, problems.shots, problems.held_out_seed)

    def improving_prompts(self) -> list[str]:
        return self._improving_prompts

    def judge(self, problem: int, text: str) -> bool:
        return is_right(self.improving[problem], text)

    def labelled_rows(self, generator: Path, seed: int) -> tuple[list[dict], list[dict], dict]:
        """The new generator's checked answers to the labelled problems: (train rows, validation rows, counts)."""
        responses = self.sample_labelled(generator, self.labelled_prompts, seed)
        rows, _, counts = label_split(
            self.labelled, self.labelled_prompts, responses, label_offline, self.sampling.max_pairs_per_problem, seed
        )
        val_prompts = set(self.labelled_prompts[: max(1, int(len(self.labelled) * self.settings.val_fraction))])
        return [r for r in rows if r["prompt"] not in val_prompts], [r for r in rows if r["prompt"] in val_prompts], counts

    def refresh_critic(self, generator: Path, previous: Path, out: Path, seed: int) -> Path:
        train_rows, val_rows, counts = self.labelled_rows(generator, seed)
        facts = {"improve": {"critic_data": {k: counts[k] for k in ("rows", "positives", "problems_with_both")}}}
        overrides = [f"seed={seed}", *self.critic_overrides]
        return refresh_critic(generator, previous, out, train_rows, val_rows, overrides, facts)

    def measure(self, export: Path) -> dict:
        return measure_export(
            export, self.held_out_prompts, [p.answer for p in self.held_out],
            lambda i, text: is_right(self.held_out[i], text), extract_answer, self.sampling.eval_samples,
            self.sampling.temperature, self.sampling.max_new_tokens, self.stop, self.sampling.batch_size,
            self.sampling.eval_seed,
        )
