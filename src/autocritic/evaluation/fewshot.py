"""Suite "fewshot" ("learning by examples"): `FewShotPromptTemplate` with an example selector over solved TRAIN
problems, accuracy on held-out questions with 0 and k examples.

    question ──► selector (random | similarity | MMR over an InMemoryVectorStore of hashed n-gram embeddings)
             ──► k solved examples ──► FewShotPromptTemplate ──► CriticLLM ──► answer

The prompt is byte-identical to `offline.tasks.few_shot_prompt` (the layout pretraining showed), so the selector
is the only thing that changes between rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from langchain_core.example_selectors import (
    BaseExampleSelector,
    MaxMarginalRelevanceExampleSelector,
    SemanticSimilarityExampleSelector,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore

from autocritic.evaluation import plots
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.embeddings import HashedNgramEmbeddings
from autocritic.evaluation.metrics import rate
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.formats import ANSWER_PREFIX, ARITHMETIC_STOP, QUESTION_PREFIX, SHOT_SEPARATOR
from autocritic.offline.labelling import extract_answer, is_correct
from autocritic.offline.tasks import Problem
from autocritic.progress import track

SELECTORS = ("random", "similarity", "mmr")
EXAMPLE_PROMPT = PromptTemplate.from_template(f"{QUESTION_PREFIX}{{question}}\n{ANSWER_PREFIX} {{answer}}")
SUFFIX = f"{QUESTION_PREFIX}{{question}}\n{ANSWER_PREFIX}"


@dataclass
class Settings:
    n_problems: int = 100
    pool_size: int = 400  # solved TRAIN problems to select from
    shots: tuple[int, ...] = (0, 2, 4)
    selectors: tuple[str, ...] = SELECTORS
    fetch_k: int = 20  # MMR: candidates re-ranked for diversity
    max_new_tokens: int = 12
    dims: int = 512  # embedding size

    def __post_init__(self) -> None:
        unknown = set(self.selectors) - set(SELECTORS)
        if unknown:
            raise ValueError(f"unknown selectors {sorted(unknown)}: use {SELECTORS}")


class SeededRandomExampleSelector(BaseExampleSelector):
    """k examples drawn at random, seeded by the question (the baseline the similarity selectors must beat)."""

    def __init__(self, examples: list[dict], k: int, seed: int):
        self.examples, self.k, self.seed = list(examples), k, seed

    def add_example(self, example: dict[str, str]) -> Any:
        self.examples.append(example)

    def select_examples(self, input_variables: dict[str, str]) -> list[dict]:
        rng = random.Random(f"{self.seed}|{input_variables['question']}")
        return rng.sample(self.examples, min(self.k, len(self.examples)))


def example_of(problem: Problem) -> dict[str, str]:
    return {"question": problem.question, "answer": problem.solution or problem.answer}


def vector_store(pool: list[Problem], embeddings) -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=embeddings)
    examples = [example_of(p) for p in pool]
    store.add_texts([e["question"] for e in examples], metadatas=examples)
    return store


def make_selector(
    name: str, k: int, pool: list[Problem], store: InMemoryVectorStore, fetch_k: int, seed: int
):
    if name == "random":
        return SeededRandomExampleSelector([example_of(p) for p in pool], k, seed)
    if name == "similarity":
        return SemanticSimilarityExampleSelector(vectorstore=store, k=k, input_keys=["question"])
    if name == "mmr":
        return MaxMarginalRelevanceExampleSelector(
            vectorstore=store, k=k, fetch_k=max(fetch_k, k), input_keys=["question"]
        )
    raise ValueError(f"unknown selector {name!r}: use one of {SELECTORS}")


def few_shot_template(selector=None) -> FewShotPromptTemplate:
    """With no selector: zero-shot (just the question in the offline format)."""
    examples = {"example_selector": selector} if selector is not None else {"examples": []}
    return FewShotPromptTemplate(
        **examples,
        example_prompt=EXAMPLE_PROMPT,
        prefix="",
        suffix=SUFFIX,
        input_variables=["question"],
        example_separator=SHOT_SEPARATOR,
    )


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    splits = ctx.splits("arithmetic", settings.n_problems, train=settings.pool_size)
    problems, pool = splits["test"], splits["train"]
    llm = ctx.llm(max_new_tokens=settings.max_new_tokens, stop=list(ARITHMETIC_STOP))
    inputs = [{"question": p.question} for p in problems]
    store = vector_store(pool, HashedNgramEmbeddings(settings.dims))

    def accuracy(template: FewShotPromptTemplate) -> float | None:
        texts = (template | llm | StrOutputParser()).batch(inputs)
        return rate([is_correct(extract_answer(t), p.answer) for t, p in zip(texts, problems, strict=True)])

    zero = accuracy(few_shot_template()) if 0 in settings.shots else None
    shots = sorted(set(settings.shots) - {0})
    table: dict[str, dict[int, float | None]] = {}
    for name in settings.selectors:
        table[name] = {0: zero} if 0 in settings.shots else {}
    for name, k in track([(n, k) for n in settings.selectors for k in shots], desc="fewshot: selectors x shots"):
        selector = make_selector(name, k, pool, store, settings.fetch_k, ctx.seed)
        table[name][k] = accuracy(few_shot_template(selector))

    columns = sorted(settings.shots)
    rows = [[name, *(table[name].get(k) for k in columns)] for name in settings.selectors]
    plot_files = []
    if (path := ctx.plot_path("fewshot.png")) is not None and columns:
        plot_files.append(
            plots.lines_plot(
                path,
                {n: [table[n].get(k) for k in columns] for n in settings.selectors},
                columns,
                "examples in the prompt (k)",
                "accuracy",
                "Few-shot accuracy by example selector",
            )
        )
    best = max(((v, n, k) for n in table for k, v in table[n].items() if k and v is not None), default=None)
    headline = {"accuracy (0 examples)": zero}
    if best is not None:
        headline[f"accuracy ({best[2]} examples, {best[1]})"] = best[0]
    return SuiteResult(
        "fewshot",
        {
            "accuracy": table,
            "n_problems": len(problems),
            "pool_size": len(pool),
            "shots": columns,
            "embedding": {"kind": "hashed character n-grams", "dims": settings.dims},
        },
        [
            Table(
                "Few-shot accuracy (greedy) by selector and number of examples",
                ["selector", *map(str, columns)],
                rows,
                note=f"{len(problems)} TEST questions; examples from {len(pool)} solved TRAIN problems; "
                "similarity and MMR search an InMemoryVectorStore of hashed character n-gram embeddings.",
            )
        ],
        plot_files,
        headline,
    )
