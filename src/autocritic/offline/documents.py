"""Pretraining documents of the offline world: solved problems as (text, trained) segments, copy lists, summary
documents, and the endless seeded stream `iter_documents` that pretraining and replay draw from by a mix."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from autocritic.errors import is_of_kind
from autocritic.formats import AI_PREFIX, HUMAN_PREFIX, NEW_SUMMARY, SHOT_SEPARATOR, SUMMARY_PREFIX
from autocritic.offline.tasks import (
    _FACTS,
    _NAMES,
    FAMILIES,
    QA_FAMILIES,
    Problem,
    _decimal,
    _dialogue,
    completion_of,
    is_statement_of,
    prompt_of,
    react_action,
    react_finish,
    react_prompt,
    sample_problem,
    split_of,
)

DOCUMENT_KINDS = (*FAMILIES, "summary", "copy", "copy_sentences")  # what a pretraining or replay mix may draw

Segment = tuple[str, bool]


def segments_of(problem: Problem) -> list[Segment]:
    """The training text cut into (text, trained) pieces: the loss covers only what the model must write
    (answers, ReAct steps, AI turns), never random operands, user facts or the tool's Observation, which
    nothing can predict and which would only add noise. Pieces are tokenized one by one: cuts after ":"
    change nothing, and the cut after LangChain's "Thought: " (trailing space) tokenizes exactly as the
    agent's prompt and the model's continuation will."""
    if problem.family == "react":
        assert problem.expression is not None
        return [
            (react_prompt(problem.question), False),
            (react_action(problem.expression) + "\nObservation:", True),
            (f" {problem.answer}\nThought: ", False),
            (react_finish(problem.answer), True),
        ]
    if problem.family == "dialogue":
        segments: list[Segment] = []
        for line in problem.question.split("\n"):
            speaker, text = line.split(": ", 1)
            if speaker == AI_PREFIX:
                segments += [(f"{AI_PREFIX}:", False), (f" {text}\n", True)]
            else:
                segments.append((f"{line}\n", False))
        return segments + [(f"{AI_PREFIX}:", False), (completion_of(problem), True)]
    return [(prompt_of(problem), False), (completion_of(problem), True)]


def copy_document(rng: random.Random) -> list[Segment]:
    """A list of numbers and words, then the same list again. Not a task anyone asks: dense copying makes the
    tiny model form the attention that copies (induction heads) far sooner than the sparse copies inside
    ReAct traces and dialogues do, and those copies are what ReAct and recall need."""
    words = [w for fact in _FACTS[:4] for w in fact[4]]
    items = [
        rng.choice([str(rng.randint(0, 9999)), _decimal(rng, 999), rng.choice(words), rng.choice(_NAMES)])
        for _ in range(rng.randint(3, 8))
    ]
    return copy_segments(" ".join(items))


def copy_sentences_document(rng: random.Random) -> list[Segment]:
    """Two to four of the dialogues' fact sentences, then the same again: the multi-sentence copy a summary is
    (in a summary, the tiny model tends to stop after the first sentence, where a lone "." is followed by a line
    break in most of its context)."""
    facts = rng.sample(_FACTS, rng.randint(2, 4))
    return copy_segments(" ".join(statement.format(v=rng.choice(values)) for _, statement, _, _, values in facts))


def copy_segments(text: str) -> list[Segment]:
    return [(f"Copy: {text}\nAgain:", False), (f" {text}", True)]


def summary_document(rng: random.Random) -> list[Segment]:
    """A conversation as `ConversationSummaryMemory` runs it with the evaluation's compact prompt: after each
    exchange the model writes the new summary (the previous one, then the fact the human just stated; small talk
    adds nothing), then a question is answered from the summary alone.
    Summaries keep the human's own words, so writing one is copying and answering from it is the recall the
    dialogues teach."""
    problem, follow_ups = _train_dialogue(rng)
    return summary_segments(problem) + _follow_up_segments(follow_ups)


def _train_dialogue(rng: random.Random) -> tuple[Problem, list[tuple[str, str]]]:
    problem, follow_ups = _dialogue(rng)
    while split_of(problem) != "train":
        problem, follow_ups = _dialogue(rng)
    return problem, follow_ups


def _follow_up_segments(follow_ups: Sequence[tuple[str, str]]) -> list[Segment]:
    """The dialogue's other facts asked back after its answer (more recall per token)."""
    return [
        segment
        for question, reply in follow_ups
        for segment in (("\n", True), (f"{HUMAN_PREFIX}: {question}\n{AI_PREFIX}:", False), (f" {reply}", True))
    ]


def summary_segments(problem: Problem) -> list[Segment]:
    """A dialogue problem through summary memory, as (prompt, target) pairs: each summary prompt and the summary
    written, the question after the final summary and its answer, and the summary of that last exchange."""
    *history, question = [line.split(": ", 1)[1] for line in problem.question.split("\n")]
    summary, document = "", []
    for human, ai in zip(history[0::2], history[1::2], strict=True):
        new = next_summary(summary, human)
        document += [
            (f"{SUMMARY_PREFIX} {summary}\n{HUMAN_PREFIX}: {human}\n{AI_PREFIX}: {ai}\n{NEW_SUMMARY}", False),
            (f"{new}\n", True),
        ]
        summary = new
    answer = completion_of(problem)
    return document + [
        (f"{summary}\n{HUMAN_PREFIX}: {question}\n{AI_PREFIX}:", False),
        (answer, True),
        # The memory then summarises the question's exchange too: a question adds nothing.
        (f"\n{SUMMARY_PREFIX} {summary}\n{HUMAN_PREFIX}: {question}\n{AI_PREFIX}:{answer}\n{NEW_SUMMARY}", False),
        (f"{summary}\n", True),
    ]


def next_summary(summary: str, human: str) -> str:
    """The summary a summary document teaches after the human says `human`: a stated fact is added in the human's
    own words, anything else leaves it as it was."""
    if not any(is_statement_of(fact, human) for fact in _FACTS):
        return summary
    return f"{summary} {human}"


def iter_documents(
    seed: int, weights: dict[str, float], max_shots: int = 4
) -> Iterator[list[Segment]]:
    """An endless stream of training documents as segments, drawn by `weights` over DOCUMENT_KINDS.
    Arithmetic comes in runs of 1..max_shots solved problems (the few-shot layout); a dialogue asks back
    every fact it stated (more recall per token)."""
    rng = random.Random(f"{seed}|documents")
    families, probabilities = zip(*weights.items(), strict=True)
    while True:
        family = rng.choices(families, probabilities)[0]
        if family == "copy":
            yield copy_document(rng)
            continue
        if family == "copy_sentences":
            yield copy_sentences_document(rng)
            continue
        if family == "summary":
            yield summary_document(rng)
            continue
        if family == "dialogue":
            problem, follow_ups = _train_dialogue(rng)
            yield segments_of(problem) + _follow_up_segments(follow_ups)
            continue
        document = []
        for index in range(rng.randint(1, max_shots) if family in QA_FAMILIES else 1):
            if index:
                document.append((SHOT_SEPARATOR, True))
            document += segments_of(sample_problem(family, rng))
        yield document


def check_mix(mix: dict[str, float]) -> None:
    """A document mix names known kinds with weights ≥ 0 (relative: they need not sum to 1), not all 0."""
    unknown = sorted(set(mix) - set(DOCUMENT_KINDS))
    if unknown:
        raise ValueError(f"mix has unknown document kinds {unknown}: use {list(DOCUMENT_KINDS)}")
    weights = list(mix.values())
    numbers = all(is_of_kind(w, (int, float)) for w in weights)
    if not numbers or any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"mix={mix}: weights must be numbers ≥ 0, at least one above 0")


def document_text(document: Sequence[Segment]) -> str:
    return "".join(text for text, _ in document)
