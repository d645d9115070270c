"""Sample K answers per problem, label each with the checker, write pointwise critic data.

    problems ──split by problem──► render_prompt(question) ──sample K──► responses ──checker──► {train,val,test}.jsonl
                                   with step labels: responses ──split into steps, Math-Shepherd──► steps_{split}.jsonl

Each row is {"prompt": question, "response": sampled text, "label": 0/1}: rendered with the same data.template
the answers were sampled with, the trainer scores exactly the sampled sequence. Empty answers and (with `unique`)
repeats of an answer to the same problem are dropped, as are those the checker cannot judge (None). With
`StepLabelling`, the same answers are also split into steps and each step labelled by its continuations
(`labelling/steps.py`), in the stepwise schema. The files are written in a sibling directory and renamed: a crash
never leaves a half-written set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autocritic.data.stepwise import DEFAULT_SEPARATOR
from autocritic.data.template import Template
from autocritic.errors import ConfigError
from autocritic.labelling.checkers import Checker
from autocritic.labelling.problems import SPLITS, Problem
from autocritic.labelling.steps import Completer, Solution, split_steps, stepwise_rows
from autocritic.staging import staged

Sampler = Callable[[Sequence[str]], list[list[str]]]  # rendered prompts -> K responses each
CARD = "card.json"
TEMPLATE = "template.txt"  # the template the answers were sampled with, for data.template_file
STEPS = "steps_"  # steps_{split}.jsonl: the stepwise rows
WRITTEN = {f"{prefix}{split}.jsonl" for split in SPLITS for prefix in ("", STEPS)} | {CARD, TEMPLATE}


@dataclass(frozen=True)
class StepLabelling:
    """Math-Shepherd step labels: `complete` continues rendered prefixes, `k` times each."""

    complete: Completer
    k: int
    separator: str = DEFAULT_SEPARATOR


def label_split(
    problems: Sequence[Problem], responses: Sequence[Sequence[str]], checker: Checker, unique: bool
) -> tuple[list[dict], dict[str, int]]:
    rows, counts = judged_answers(problems, responses, checker, unique)
    return [{"prompt": p.question, "response": response, "label": label} for p, response, label in rows], counts


def judged_answers(
    problems: Sequence[Problem], responses: Sequence[Sequence[str]], checker: Checker, unique: bool
) -> tuple[list[tuple[Problem, str, int]], dict[str, int]]:
    """(problem, response, 0/1 label) of each kept answer, and the counts of the kept and dropped ones."""
    rows, counts = [], dict.fromkeys(("problems", "sampled", "empty", "repeated", "unjudged", "right", "wrong"), 0)
    counts["problems"] = len(problems)
    for problem, samples in zip(problems, responses, strict=True):
        seen = set()
        for response in samples:
            counts["sampled"] += 1
            if not response.strip():
                counts["empty"] += 1
                continue
            if unique and response in seen:
                counts["repeated"] += 1
                continue
            seen.add(response)
            verdict = checker(problem.question, problem.answer, response)
            if verdict is None:
                counts["unjudged"] += 1
                continue
            counts["right" if verdict else "wrong"] += 1
            rows.append((problem, response, int(bool(verdict))))
    return rows, counts


def write_set(out_dir: Path, rows: Mapping[str, list[dict]], card: dict) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not set(p.name for p in out_dir.iterdir()) <= WRITTEN:
        raise ConfigError(f"generate.out={out_dir} holds other files: name a new or an earlier labelled directory.")
    with staged(out_dir) as tmp:
        for split, split_rows in rows.items():
            (tmp / f"{split}.jsonl").write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows), encoding="utf-8"
            )
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / TEMPLATE).write_text(card["template"], encoding="utf-8")
    return out_dir


def build_labelled_data(
    splits: Mapping[str, Sequence[Problem]],
    sample: Sampler,
    checker: Checker,
    template: str,
    out_dir: Path,
    unique: bool = True,
    card: dict | None = None,
    steps: StepLabelling | None = None,
) -> dict:
    """Sample, label and write every split (and with `steps`, its stepwise rows); returns the card (counts per
    split)."""
    render = Template(template).render_prompt
    rows, card = {}, dict(card or {}, template=template, splits={})
    for split in SPLITS:
        problems = list(splits.get(split, []))
        responses = sample([render(p.question) for p in problems]) if problems else []
        judged, card["splits"][split] = judged_answers(problems, responses, checker, unique)
        rows[split] = [{"prompt": p.question, "response": response, "label": label} for p, response, label in judged]
        if steps is not None:
            solutions = [
                Solution(p.question, tuple(split_steps(response, steps.separator)), p.answer, render(p.question))
                for p, response, _ in judged
            ]
            rows[STEPS + split], card.setdefault("steps", {})[split] = stepwise_rows(
                solutions, steps.complete, checker, steps.k, steps.separator
            )
    if not rows["train"]:
        raise ConfigError(
            "no training row was labelled (every sampled answer was empty or unjudged): raise generate.max_new_tokens "
            "or check the stop strings (generate.stop)."
        )
    write_set(out_dir, rows, card)
    return card
