"""The generated world: deterministic, split by problem identity, formats that other modules rely on."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from autocritic import formats
from autocritic.formats import format_number
from autocritic.offline import documents, tasks
from autocritic.offline.tasks import FAMILIES, evaluate_expression, is_tiny, make_splits, render, split_of


@pytest.fixture(scope="module")
def splits():
    return make_splits(seed=0, train=60, val=30, test=30)


def test_make_splits_is_deterministic_and_seeded(splits):
    assert make_splits(seed=0, train=60, val=30, test=30) == splits
    assert make_splits(seed=1, train=60, val=30, test=30)["test"] != splits["test"]


def test_splits_never_share_a_problem(splits):
    keys = {split: {p.key for p in problems} for split, problems in splits.items()}
    assert (
        not keys["train"] & keys["val"]
        and not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
    )
    for split, problems in splits.items():
        assert len(problems) == len(keys[split]) == (60 if split == "train" else 30) * len(FAMILIES)
        assert all(split_of(p) == split for p in problems)


def test_tiny_fact_spaces_stay_in_train(splits):
    assert is_tiny("3+4") and is_tiny("7*8") and not is_tiny("13+4") and not is_tiny("1.5*2")
    held_out = [p for p in splits["val"] + splits["test"] if p.expression is not None]
    assert held_out and not any(is_tiny(p.expression) for p in held_out)
    rng = random.Random(0)
    for _ in range(200):
        problem = tasks.arithmetic_problem(rng)
        if is_tiny(problem.expression):
            assert split_of(problem) == "train"


def test_answers_are_exact(splits):
    for problem in splits["test"]:
        if problem.expression is not None:
            assert problem.answer == format_number(evaluate_expression(problem.expression))
    assert {p.family for p in splits["test"]} == set(FAMILIES)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (68, "68"),
        (6.799999999, "6.8"),
        (2.5, "2.5"),
        (-0.00001, "0"),
        (1 / 3, "0.3333"),
        (1e12, "1000000000000"),
        (-4.0, "-4"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_calculator_rejects_anything_but_arithmetic():
    assert evaluate_expression("(4.5*2.1)**2") == pytest.approx(89.3025)
    for bad in ("__import__('os')", "2**1000", "a+1", "[1]"):
        with pytest.raises((ValueError, SyntaxError)):
            evaluate_expression(bad)


def test_react_trace_has_the_langchain_lines():
    trace = tasks.render_react("What is 23 times 4.5?", "23*4.5", "103.5")
    assert trace.endswith(
        "Question: What is 23 times 4.5?\n"
        "Thought: I should use the calculator.\n"
        "Action: Calculator\n"
        "Action Input: 23*4.5\n"
        "Observation: 103.5\n"
        "Thought: I now know the final answer.\n"
        "Final Answer: 103.5"
    )
    # What LangChain sends for the second step is a prefix of the trace.
    first = tasks.react_prompt("What is 23 times 4.5?") + tasks.react_action("23*4.5")
    assert trace.startswith(first + "\nObservation: 103.5\nThought: ")
    assert formats.REACT_STOP == ("\nObservation",)


def test_dialogue_answer_is_stated_in_the_conversation(splits):
    dialogues = [p for p in splits["train"] if p.family == "dialogue"]
    for problem in dialogues:
        human = [line for line in problem.question.split("\n") if line.startswith("Human: ")]
        assert any(problem.answer in line for line in human[:-1])
        assert render(problem).endswith(f" {problem.answer}.") and "\nAI: You" in render(problem)[-40:]


def test_prompt_plus_completion_is_the_training_text(splits):
    for problem in splits["val"]:
        assert tasks.prompt_of(problem) + tasks.completion_of(problem) == render(problem)


def test_few_shot_prompt_ends_with_the_question(splits):
    arithmetic = [p for p in splits["test"] if p.family == "arithmetic"]
    pool = [p for p in splits["train"] if p.family == "arithmetic"]
    prompts = tasks.few_shot_prompts(arithmetic, pool, shots=2, seed=0)
    assert prompts == tasks.few_shot_prompts(arithmetic, pool, shots=2, seed=0)
    for problem, prompt in zip(arithmetic, prompts, strict=True):
        assert prompt.endswith(tasks.prompt_of(problem)) and prompt.count("Question:") == 3


def test_document_stream_is_deterministic():
    weights = {"arithmetic": 0.8, "react": 0.1, "dialogue": 0.1}
    first = list(itertools.islice(documents.iter_documents(0, weights), 50))
    assert first == list(itertools.islice(documents.iter_documents(0, weights), 50))
    assert first != list(itertools.islice(documents.iter_documents(1, weights), 50))


def test_copy_sentences_documents_repeat_two_to_four_fact_sentences():
    statements = [re.escape(fact[1]).replace(r"\{v\}", ".+?") for fact in tasks._FACTS]
    sentence = re.compile("|".join(statements))
    for document in itertools.islice(documents.iter_documents(0, {"copy_sentences": 1.0}), 30):
        [(prompt, trained_prompt), (copy, trained_copy)] = document
        assert prompt == f"Copy:{copy}\nAgain:" and (trained_prompt, trained_copy) == (False, True)
        assert 2 <= len(sentence.findall(copy)) <= 4 and sentence.sub("", copy).strip() == ""


def test_training_documents_ask_back_every_stated_fact():
    weights = {"dialogue": 1.0}
    for document in itertools.islice(documents.iter_documents(0, weights), 30):
        text = documents.document_text(document)
        asked = [line for line in text.split("\n") if line[len("Human: ") :] in {f[2] for f in tasks._FACTS}]
        answers = [t for t, trained in document if trained and not t.endswith("\n")]
        assert len(answers) == len(asked) == len(set(asked)) >= 1
        first_question = text.index(asked[0])
        assert all(t.strip(" .").split(" ")[-1] in text[:first_question] for t in answers)


def test_few_shot_examples_come_from_the_problems_family_and_do_not_depend_on_the_list(splits):
    problems = [p for p in splits["test"] if p.family in tasks.QA_FAMILIES]
    pool = [p for p in splits["train"] if p.family in tasks.QA_FAMILIES]
    prompts = tasks.few_shot_prompts(problems, pool, shots=2, seed=0)
    for problem, prompt in zip(problems, prompts, strict=True):
        shots = prompt.split(formats.SHOT_SEPARATOR)[:-1]
        marker = "Question: Use " if problem.family == "countdown" else "Question: What is "
        assert len(shots) == 2 and all(shot.startswith(marker) for shot in shots)
    assert tasks.few_shot_prompts(problems[::-1], pool, shots=2, seed=0) == prompts[::-1]


def test_backbone_report_covers_every_family(tiny_backbone):
    from autocritic.offline.evaluate import evaluate_backbone

    report = evaluate_backbone(tiny_backbone, n_per_family=2, samples=2, shots=1, batch_size=8)
    for key in (
        "arithmetic/few_shot_greedy_accuracy",
        "react/format_ok",
        "dialogue/recall",
    ):
        assert 0.0 <= report[key] <= 1.0, key


def test_the_draws_judge_the_figure_of_the_backbone_report(tiny_backbone, monkeypatch):
    """few_shot_arithmetic, which judges a pretraining draw, is the report's few-shot figure, on the same problems."""
    from transformers import AutoTokenizer, FalconForCausalLM

    from autocritic.offline import evaluate

    question = re.compile(r"What is (.+)\?\nAnswer:$")

    def half_right(model, prompts, **kwargs):
        """The right answer to arithmetic questions whose answer is even, a wrong one to the rest."""
        replies = []
        for prompt in prompts:
            match = question.search(prompt)
            answer = format_number(evaluate_expression(match[1])) if match else ""
            replies.append([f" {answer}" if answer and int(float(answer)) % 2 == 0 else " x"])
        return replies

    monkeypatch.setattr(evaluate, "complete", half_right)
    report = evaluate.evaluate_backbone(tiny_backbone, n_per_family=20, samples=2, shots=1, batch_size=8)
    model, tokenizer = FalconForCausalLM.from_pretrained(tiny_backbone), AutoTokenizer.from_pretrained(tiny_backbone)
    measured = evaluate.few_shot_arithmetic(model, tokenizer, n_problems=20, shots=1)
    _, test = evaluate.held_out_problems(20, 1, 0)
    even = [int(float(p.answer)) % 2 == 0 for p in test["arithmetic"]]
    assert measured == report["arithmetic/few_shot_greedy_accuracy"] == round(sum(even) / len(even), 4)
    assert 0 < measured < 1


def test_backbone_report_command_line_explains_a_wrong_argument(tmp_path, capsys):
    from autocritic.offline.evaluate import main

    assert main([]) == 2 and "usage" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "phase=pretrain" in error and "Traceback" not in error
    assert main(["--help"]) == 0


def test_summary_documents_keep_every_stated_fact_in_order(splits):
    dialogues = [p for p in splits["train"] if p.family == "dialogue"]
    for problem in dialogues:
        segments = documents.summary_segments(problem)
        summaries = [t.strip("\n") for t, trained in segments if trained and t.endswith("\n")]
        *history, _ = [line.split(": ", 1)[1] for line in problem.question.split("\n")]
        facts = [h for h in history[0::2] if any(tasks.is_statement_of(f, h) for f in tasks._FACTS)]
        written = " " + " ".join(facts)
        assert summaries[-1] == summaries[-2] == written  # the question's exchange adds nothing
        assert problem.answer in summaries[-1]
