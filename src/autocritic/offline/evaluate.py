"""Measure what the offline backbone learned, on held-out problems: the script behind the reported figures.

python -m autocritic.offline.evaluate <model_dir>        # prints the metrics as JSON
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoTokenizer, FalconForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from autocritic.formats import ARITHMETIC_STOP, CALCULATOR_NAME, DIALOGUE_STOP, REACT_STOP, format_number
from autocritic.model.complete import complete
from autocritic.offline.labelling import extract_answer, is_correct
from autocritic.offline.tasks import (
    QA_FAMILIES,
    Problem,
    completion_of,
    evaluate_expression,
    few_shot_prompts,
    make_splits,
    prompt_of,
    react_prompt,
)

_ACTION = re.compile(r"Action\s*:\s*(.*?)\s*\nAction\s*Input\s*:\s*(.*)", re.DOTALL)


def _react_action_ok(problem: Problem, text: str) -> bool:
    """LangChain's ReAct parser would accept it, names the calculator, and the input computes the answer."""
    match = _ACTION.search(text)
    if not match or match[1] != CALCULATOR_NAME or "Final Answer:" in text:
        return False
    try:
        return format_number(evaluate_expression(match[2].strip())) == problem.answer
    except (ArithmeticError, ValueError, SyntaxError, TypeError, RecursionError):
        return False


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / max(1, len(flags)), 4)


def held_out_problems(n_per_family: int, shots: int, seed: int) -> tuple[list[Problem], dict[str, list[Problem]]]:
    """The few-shot pool and the held-out test problems of each family that the backbone report measures."""
    splits = make_splits(seed, train=max(shots * 4, 50), val=0, test=n_per_family)
    test = defaultdict(list)
    for problem in splits["test"]:
        test[problem.family].append(problem)
    return [p for p in splits["train"] if p.family in QA_FAMILIES], test


def _right(problems: list[Problem], outputs: list[list[str]]) -> list[bool]:
    return [is_correct(extract_answer(out[0]), p.answer) for p, out in zip(problems, outputs, strict=True)]


def few_shot_arithmetic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n_problems: int = 200,
    shots: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """The report's `arithmetic/few_shot_greedy_accuracy` of a model in memory: what a backbone draw is judged by."""
    pool, test = held_out_problems(n_problems, shots, seed)
    arithmetic = test["arithmetic"]
    outputs = complete(
        model,
        tokenizer=tokenizer,
        prompts=few_shot_prompts(arithmetic, pool, shots, seed),
        max_new_tokens=12,
        stop=ARITHMETIC_STOP,
        batch_size=batch_size,
    )
    return _rate(_right(arithmetic, outputs))


def evaluate_backbone(
    model_dir: Path,
    n_per_family: int = 200,
    samples: int = 8,
    temperature: float = 0.8,
    shots: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Greedy arithmetic accuracy (zero- and few-shot, per level), ReAct format, dialogue recall, and the mix of right and wrong among `samples` sampled
    few-shot arithmetic answers, all on the held-out test split."""
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # generation masks padding by the attention mask
        tokenizer.pad_token = tokenizer.eos_token
    model = FalconForCausalLM.from_pretrained(model_dir).eval()
    pool, test = held_out_problems(n_per_family, shots, seed)
    arithmetic = test["arithmetic"]
    run = dict(tokenizer=tokenizer, batch_size=batch_size, progress=progress)

    def answers(prompts: list[str], desc: str, sampled: bool = False) -> list[list[str]]:
        """Question-answer completions: greedy, or `samples` each at `temperature`."""
        sampling = dict(temperature=temperature, num_samples=samples, seed=seed) if sampled else {}
        return complete(
            model, prompts=prompts, max_new_tokens=12, stop=ARITHMETIC_STOP, desc=desc, **sampling, **run
        )

    zero = answers([prompt_of(p) for p in arithmetic], "arithmetic")
    few_prompts = few_shot_prompts(arithmetic, pool, shots, seed)
    right = _right(arithmetic, zero)
    right_few = _right(arithmetic, answers(few_prompts, "few-shot"))
    by_level = defaultdict(list)
    for problem, ok in zip(arithmetic, right, strict=True):
        by_level[f"level_{problem.level}"].append(ok)

    sampled = answers(few_prompts, "sampled", sampled=True)
    sample_right = [
        [is_correct(extract_answer(s), p.answer) for s in outs]
        for p, outs in zip(arithmetic, sampled, strict=True)
    ]

    react = test["react"]
    actions = complete(
        model, prompts=[prompt_of(p) for p in react], max_new_tokens=48, stop=REACT_STOP, desc="react", **run
    )
    action_ok = [_react_action_ok(p, out[0]) for p, out in zip(react, actions, strict=True)]
    # The second step sees the true observation, as LangChain's scratchpad renders it.
    finals = complete(
        model,
        prompts=[
            react_prompt(p.question, out[0] + f"\nObservation: {p.answer}\nThought: ")
            for p, out in zip(react, actions, strict=True)
        ],
        max_new_tokens=32,
        stop=("\n\n", "\nQuestion", "\nObservation"),
        desc="react final",
        **run,
    )
    final_ok = [
        out[0].rstrip().endswith(f"Final Answer: {p.answer}") for p, out in zip(react, finals, strict=True)
    ]

    dialogue = test["dialogue"]
    replies = complete(
        model,
        prompts=[prompt_of(p) for p in dialogue],
        max_new_tokens=8,
        stop=DIALOGUE_STOP,
        desc="dialogue",
        **run,
    )
    recalled = [out[0].strip() == completion_of(p).strip() for p, out in zip(dialogue, replies, strict=True)]

    return {
        "arithmetic/greedy_accuracy": _rate(right),
        "arithmetic/few_shot_greedy_accuracy": _rate(right_few),
        **{f"arithmetic/{level}": _rate(flags) for level, flags in sorted(by_level.items())},
        "arithmetic/sampled_accuracy": _rate([ok for row in sample_right for ok in row]),
        "arithmetic/questions_with_right_and_wrong": _rate(
            [any(row) and not all(row) for row in sample_right]
        ),
        "react/action_ok": _rate(action_ok),
        "react/final_answer_ok": _rate(final_ok),
        "react/format_ok": _rate([a and f for a, f in zip(action_ok, final_ok, strict=True)]),
        "dialogue/recall": _rate(recalled),
        "n_per_family": n_per_family,
        "samples": samples,
        "temperature": temperature,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }


USAGE = "usage: python -m autocritic.offline.evaluate <model_dir>   (e.g. data/offline/backbone)"


def main(argv: list[str]) -> int:
    """The command line: a wrong argument gets the usage and exit code 2, never a traceback."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    model_dir = Path(argv[0])
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        print(
            f"autocritic: {model_dir} is not a backbone directory (it needs config.json and tokenizer.json). "
            "Build the offline one with `python train.py phase=pretrain` (it lands in data/offline/backbone).\n"
            + USAGE,
            file=sys.stderr,
        )
        return 2
    print(json.dumps(evaluate_backbone(model_dir, progress=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
