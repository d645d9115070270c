"""Countdowns: reach a target from given numbers, one operation per line. The problems, their exact step labels
(a dead end is a wrong step), what counts as right, their data and their preset."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re

import pytest
from helpers import compose_train, tiny_pretrain_settings

from autocritic.data.stepwise import expand_steps
from autocritic.offline.documents import document_text, iter_documents
from autocritic.offline.generate import (
    ALTERNATIVES,
    CARD,
    GenerateSettings,
    _fingerprint,
    alternative_step_rows,
    build_critic_data,
    output_files,
    step_rows,
)
from autocritic.offline.labelling import is_right, label_offline
from autocritic.offline.pretrain import PretrainSettings, build_backbone
from autocritic.offline.steps import (
    countdown_alternatives,
    countdown_next_steps,
    countdown_reachable,
    countdown_step_labels,
    split_steps,
    step_labels,
)
from autocritic.offline.tasks import (
    COUNTDOWN_MAX,
    Problem,
    countdown_numbers,
    countdown_problem,
    make_splits,
    prompt_of,
    split_of,
)

STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+) \(left ((?:\d+ )*\d+); goal (\d+)\)")


def countdown(numbers: str, target: int) -> Problem:
    count = len(numbers.split())
    return Problem("countdown", f"Use {numbers} to make {target}.", str(target), count - 1, f"countdown_{count}")


def test_countdown_solutions_use_every_number_once_and_reach_the_target():
    rng = random.Random(1)
    problems = [countdown_problem(rng) for _ in range(500)]
    assert {p.kind for p in problems} == {"countdown_3", "countdown_4", "countdown_5"}
    for problem in problems:
        numbers, target = countdown_numbers(problem)
        assert problem.answer == str(target) and problem.level == len(numbers) - 1
        steps = split_steps(problem.solution)
        assert len(steps) == len(numbers) and steps[-1] == f"Answer: {target}"
        pool = list(numbers)
        for step in steps[:-1]:
            a, op, b, c, left, goal = STEP.fullmatch(step).groups()
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op] and 0 < c <= COUNTDOWN_MAX and int(goal) == target
            pool.remove(a)
            pool.remove(b)
            pool.append(c)
            assert [int(n) for n in left.split()] == pool
        assert pool == [target]
        assert countdown_step_labels(problem, steps) == [True] * len(steps) and is_right(problem, problem.solution)
        assert prompt_of(problem) == f"Question: {problem.question}\n"


def test_reachable_uses_every_number_once():
    assert countdown_reachable([3, 5], 8) and countdown_reachable([3, 5], 15) and countdown_reachable([3, 5], 2)
    assert not countdown_reachable([3, 5], 9) and not countdown_reachable([3, 5], 3)  # every number must be used
    assert not countdown_reachable([4, 4], 0)  # a difference stays above 0
    assert countdown_reachable([7], 7) and not countdown_reachable([7], 8)
    assert countdown_reachable([1, 5, 9, 7], 28)  # 1*7, 9-5, 7*4
    # Exhaustive against a brute force over orders and operations on three numbers.
    for numbers in itertools.product(range(1, 5), repeat=3):
        made = set()
        for a, b, c in itertools.permutations(numbers):
            for x in (a + b, a * b, a - b):
                if x > 0:
                    made |= {y for y in (x + c, x * c, x - c, c - x) if y > 0}
        assert {t for t in range(1, 70) if countdown_reachable(numbers, t)} == made


def test_step_labels_of_hand_written_countdowns():
    problem = countdown("3 5 8 1", 19)
    right = ["8*3=24 (left 5 1 24; goal 19)", "24-5=19 (left 1 19; goal 19)", "19*1=19 (left 19; goal 19)", "Answer: 19"]
    assert countdown_step_labels(problem, right) == [True] * 4 and is_right(problem, "\n".join(right))
    assert step_labels(problem, right) == [True] * 4
    # the numbers left may be written in any order
    assert countdown_step_labels(problem, ["3*8=24 (left 24 5 1; goal 19)"]) == [True]
    # a dead end: right arithmetic, but 19 can no longer be made from 8 1 8
    assert countdown_step_labels(problem, ["3+5=8 (left 8 1 8; goal 19)", "8+8=16 (left 1 16; goal 19)"]) == [
        False,
        False,
    ]
    assert countdown_step_labels(problem, ["8*3=25 (left 5 1 25; goal 19)"]) == [False]  # wrong result
    assert countdown_step_labels(problem, ["8*8=64 (left 3 5 1 64; goal 19)"]) == [False]  # 8 used twice
    assert countdown_step_labels(problem, ["8*3=24 (left 5 24; goal 19)"]) == [False]  # a number lost
    assert countdown_step_labels(problem, ["8*3=24 (left 5 1 24; goal 18)"]) == [False]  # another goal
    assert countdown_step_labels(problem, ["1-1=0 (left 3 5 8 0; goal 19)"]) == [False]  # not allowed
    assert countdown_step_labels(problem, ["8*3=24"]) == [False]  # no state written
    assert countdown_step_labels(problem, [*right[:3], "Answer: 18"]) == [True, True, True, False]
    assert countdown_step_labels(problem, [*right[:2], "Answer: 19"]) == [True, True, False]  # a number unused
    assert countdown_step_labels(problem, [*right, "Answer: 19"]) == [True] * 4 + [False]
    assert countdown_step_labels(problem, []) == []
    with pytest.raises(ValueError, match="not a countdown problem"):
        countdown_step_labels(Problem("arithmetic", "What is 1+2?", "3", 1, "add_1d", "1+2"), ["Answer: 3"])


def test_a_countdown_is_right_only_through_right_steps():
    problem = countdown("3 5 8 1", 19)
    assert not is_right(problem, "Answer: 19")  # the target is in the question: the answer line proves nothing
    assert not is_right(problem, "8*3=24 (left 5 1 24; goal 19)\n24-5=19 (left 1 19; goal 19)\nAnswer: 19")
    assert not is_right(problem, "8*3=24 (left 5 1 24; goal 19)\n24-5=19 (left 1 19; goal 19)\n19*1=19 (left 19; goal 19)")


def test_countdown_splits_do_not_overlap_and_documents_start_with_a_countdown():
    splits = make_splits(0, train=40, val=20, test=20, families=["countdown"])
    keys = {split: {p.key for p in problems} for split, problems in splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"]) and not (keys["train"] & keys["val"])
    assert all(split_of(p) == split for split, problems in splits.items() for p in problems)
    documents = iter_documents(0, {"countdown": 1.0})
    texts = [document_text(next(documents)) for _ in range(50)]
    assert all(t.startswith("Question: Use ") for t in texts)
    assert all(shot.split("\n")[-1].startswith("Answer: ") for t in texts for shot in t.split("\n\n"))
    assert "countdown" not in PretrainSettings().mix  # the default backbone never draws one


def test_step_rows_label_countdowns_with_dead_ends():
    problem = countdown("3 5 8", 29)  # 3*8+5
    prompt = prompt_of(problem)
    responses = [["8*3=24 (left 5 24; goal 29)\n24+5=29 (left 29; goal 29)\nAnswer: 29", "3+5=8 (left 8 8; goal 29)\n8+8=16 (left 16; goal 29)\nAnswer: 16"]]
    rows, counts = step_rows([problem], [prompt], responses)
    assert [row["labels"] for row in rows] == [[True, True, True], [False, False, False]]
    assert counts["rows_all_steps_right"] == 1 and counts["steps"] == 6


def test_next_steps_are_every_allowed_step_labelled_as_the_step_labeller_would():
    problem = countdown("3 5 8", 29)
    options = countdown_next_steps([3, 5, 8], 29, random.Random(0))
    assert len(options) == len(set(options))
    for step, good in options:
        assert countdown_step_labels(problem, [step]) == [good]
    pairs = {frozenset(map(int, STEP.fullmatch(step).group(1, 3))) for step, _ in options}
    assert pairs == {frozenset({3, 5}), frozenset({3, 8}), frozenset({5, 8})}
    assert {"8*3=24 (left 5 24; goal 29)", "3*8=24 (left 5 24; goal 29)"} & {step for step, _ in options}
    assert not any("-" in step.split("=")[0] and int(STEP.fullmatch(step)[4]) <= 0 for step, _ in options)


def test_alternatives_come_from_states_reached_through_right_steps_and_leave_the_sampled_step_out():
    problem = countdown("3 5 8 1", 19)
    right = ["8*3=24 (left 5 1 24; goal 19)", "24-5=19 (left 1 19; goal 19)", "19*1=19 (left 19; goal 19)", "Answer: 19"]
    seen: set = set()
    alternatives = countdown_alternatives(problem, right, [True] * 4, 2, random.Random(0), seen)
    assert [len(before) for before, _, _ in alternatives] == [0, 0, 1, 1, 2, 2]  # 3 states with 2+ numbers left
    for before, step, good in alternatives:
        assert step != right[len(before)]
        assert countdown_step_labels(problem, [*before, step]) == [True] * len(before) + [good]
    # the same states again (another sample of the same problem): nothing new
    assert countdown_alternatives(problem, right, [True] * 4, 2, random.Random(0), seen) == []
    dead_end = ["3+5=8 (left 8 1 8; goal 19)", "8+8=16 (left 1 16; goal 19)"]
    from_dead_end = countdown_alternatives(problem, dead_end, [False, False], 50, random.Random(0), set())
    assert {len(before) for before, _, _ in from_dead_end} == {0}  # nothing from the states after a wrong step
    assert len(from_dead_end) == len(countdown_next_steps([3, 5, 8, 1], 19, random.Random(0))) - 1


def test_alternative_rows_read_as_one_step_each_after_the_steps_before():
    problem = countdown("3 5 8", 29)
    prompt = prompt_of(problem)
    rows, _ = step_rows([problem], [prompt], [["8*3=24 (left 5 24; goal 29)\n24+5=29 (left 29; goal 29)\nAnswer: 29"]])
    alternatives = alternative_step_rows([problem], [prompt], rows, 3, seed=0)
    assert alternatives == alternative_step_rows([problem], [prompt], rows, 3, seed=0)  # seeded
    assert len(alternatives) == 6 and all(len(row["completions"]) == 1 for row in alternatives)
    expanded = expand_steps(alternatives, "\n")
    assert len(expanded) == len(alternatives)
    for row in expanded:
        steps = split_steps((row["prompt"] + row["response"])[len(prompt):])
        assert countdown_step_labels(problem, steps)[-1] == bool(row["label"])
    assert {row["prompt"] for row in alternatives} == {prompt, prompt + "8*3=24 (left 5 24; goal 29)\n"}


def test_generate_writes_the_alternatives_only_when_asked(tmp_path):
    # without them, the fingerprint is the one builds had before the setting existed: they stay valid
    before = GenerateSettings(train_problems=3000)  # the default of those builds
    assert _fingerprint(before, "backbone", label_offline, None) == "d2a1ad75c3edeb75"
    with_them = dataclasses.replace(before, step_alternatives=2)
    assert _fingerprint(with_them, "backbone", label_offline, None) != "d2a1ad75c3edeb75"
    settings = tiny_pretrain_settings(max_steps=10, mix={"countdown": 0.9, "arithmetic": 0.1})
    backbone = build_backbone(settings, tmp_path / "backbone", progress=False)
    generate = GenerateSettings(
        families=("countdown",), train_problems=6, val_problems=2, test_problems=2, samples=3, temperature=1.0,
        shots=0, max_new_tokens=48, stop=("\n\n",), batch_size=16, step_alternatives=2,
    )
    out = build_critic_data(backbone, generate, tmp_path / "critic", progress=False)
    assert all(path.is_file() for path in output_files(out, stepwise=True, alternatives=True))
    rows = [json.loads(line) for line in (out / ALTERNATIVES).read_text().splitlines()]
    counts = json.loads((out / CARD).read_text())["splits"]["train"]["steps"]
    assert counts["alternatives"] == len(rows) >= 6 * 2  # at least the root of each train problem
    assert counts["alternatives_right"] == sum(row["labels"][0] for row in rows)
    assert all(row["prompt"].startswith("Question: Use ") and len(row["completions"]) == 1 for row in rows)
    assert build_critic_data(backbone, generate, out, progress=False) == out  # built: skipped
    (out / ALTERNATIVES).unlink()
    assert build_critic_data(backbone, generate, out, progress=False) == out and (out / ALTERNATIVES).is_file()


def test_the_countdown_preset_composes():
    cfg = compose_train(["experiment=countdown"])
    assert cfg.paths.offline == "data/offline-countdown"
    assert cfg.model.name_or_path == "data/offline-countdown/backbone"
    mix = {kind: weight for kind, weight in cfg.offline.pretrain.mix.items() if weight}
    assert max(mix, key=mix.get) == "countdown" and set(mix) <= {"countdown", "arithmetic"}
    assert list(cfg.offline.generate.families) == ["countdown"] and cfg.data.schema == "stepwise"
    assert list(cfg.data.train_files) == [
        "data/offline-countdown/critic/steps_train.jsonl",
        "data/offline-countdown/critic/steps_alternatives_train.jsonl",
    ]
    assert cfg.offline.generate.step_alternatives == 3 and cfg.offline.generate.train_problems == 6000
    outcome = compose_train(["experiment=countdown", "data=offline-steps-outcome"])
    assert list(outcome.data.train_files) == ["data/offline-countdown/critic/train.jsonl"]
    assert outcome.data.schema == "pointwise"
    PretrainSettings(**{**cfg.offline.pretrain, "mix": dict(cfg.offline.pretrain.mix)})


def test_the_countdown_step_critic_trains_with_the_step_recipe():
    def recipe(cfg):
        return cfg.data.batch_size, cfg.phase.lr, cfg.phase.max_epochs, cfg.phase.schedule

    countdown = compose_train(["experiment=countdown", "phase=transfer"])
    steps = compose_train(["experiment=steps", "phase=transfer"])
    assert recipe(steps) == (512, 6e-3, 24, "cosine")
    assert recipe(countdown) == (512, 6e-3, 12, "cosine")  # twice the rows of 3,000 problems: the same steps
    outcome = compose_train(["experiment=countdown", "phase=transfer", "data=offline-steps-outcome"])
    assert recipe(outcome) == recipe(steps)
