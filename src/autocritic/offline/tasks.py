"""Seeded generators for the offline world: arithmetic, ReAct calculator traces, recall dialogues, chains of sums
worked one step per line, and countdowns (reach a target from given numbers, one operation per line).

Every problem has a `key` (its identity: the expression, or the whole conversation) and the split is a
pure function of that key, so arithmetic and ReAct never share a problem across splits, any generator can
draw unlimited fresh training problems, and train / val / test never overlap whatever the seed.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autocritic.formats import (  # the text formats every layer shares; re-exported for the offline world
    AI_PREFIX,
    ANSWER_PREFIX,
    CALCULATOR_NAME,
    HUMAN_PREFIX,
    QUESTION_PREFIX,
    REACT_FIRST_THOUGHT,
    REACT_LAST_THOUGHT,
    REACT_TEMPLATE,
    REACT_TOOLS,
    SHOT_SEPARATOR,
    STEP_SEPARATOR,
    format_number,
)

FAMILIES = ("arithmetic", "react", "dialogue", "chain", "countdown")
# Families written in the few-shot layout "Question: ...\n<solution>" (runs of solved problems in pretraining).
QA_FAMILIES = ("arithmetic", "chain", "countdown")
# Families whose solutions are steps on the lines after the question, each checkable on its own.
STEP_FAMILIES = ("chain", "countdown")
SPLITS = ("train", "val", "test")
# Fraction of non-tiny problems held out, per mille; the salt is fixed so that the seed never moves a
# problem from one split to another (a backbone and its critic data built with different seeds stay clean).
TEST_PER_MILLE = 80
VAL_PER_MILLE = 40
SPLIT_SALT = "autocritic-offline-v1"

@dataclass(frozen=True)
class Problem:
    """One question with its exact answer. `question` is the whole conversation for dialogues; `solution`, when
    given (e.g. a GSM8K worked answer ending "#### 42"), is what a solved few-shot example shows."""

    family: str
    question: str
    answer: str
    level: int
    kind: str
    expression: str | None = None
    solution: str | None = None

    @property
    def key(self) -> str:
        return self.expression if self.expression is not None else self.question


# --- numbers and the calculator -------------------------------------------------------------------------


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_expression(expression: str) -> float:
    """Evaluate +, -, *, /, ** and brackets over plain numbers (ast, no eval); the world's calculator."""

    def visit(node: ast.AST) -> float:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exponent = visit(node.left), visit(node.right)
            if abs(exponent) > 12:
                raise ValueError(f"exponent {exponent} is too large")
            return float(base) ** exponent if not float(exponent).is_integer() else base ** int(exponent)
        raise ValueError(f"unsupported expression {expression!r}")

    if len(expression) > 200:
        raise ValueError("expression is too long")
    return float(visit(ast.parse(expression.strip(), mode="eval").body))


# --- splits ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def is_tiny(expression: str) -> bool:
    """Single-digit operands only (all 1-digit sums, the times table): too few facts to hold any out."""
    return all(len(number) == 1 for number in _NUMBER.findall(expression))


def split_of(problem: Problem) -> str:
    if problem.expression is not None and is_tiny(problem.expression):
        return "train"
    bucket = int(hashlib.sha256(f"{SPLIT_SALT}|{problem.key}".encode()).hexdigest(), 16) % 1000
    if bucket < TEST_PER_MILLE:
        return "test"
    return "val" if bucket < TEST_PER_MILLE + VAL_PER_MILLE else "train"


# --- arithmetic -----------------------------------------------------------------------------------------


def _decimal(rng: random.Random, high: int) -> str:
    return f"{rng.randint(0, high)}.{rng.randint(1, 9)}"


def _division(rng: random.Random) -> str:
    divisor = rng.randint(2, 9)
    return f"{divisor * rng.randint(2, 99)}/{divisor}"


# (kind, level, expression sampler, eligible for val/test, weight). Levels follow what the tiny model learns
# late: 2-digit + first, then - and 3 digits, then x and /, decimals. 1-digit facts and powers are train
# only and quickly learned (half weight); the weights also shape val / test, which lean to what a 5-minute
# model can partly solve, so that sampled answers mix right and wrong.
ARITHMETIC_KINDS: list[tuple[str, int, Callable[[random.Random], str], bool, float]] = [
    ("add_1d", 1, lambda r: f"{r.randint(0, 9)}+{r.randint(0, 9)}", False, 0.5),
    ("sub_1d", 1, lambda r: "{1}-{0}".format(*sorted((r.randint(0, 9), r.randint(0, 9)))), False, 0.5),
    ("mul_1d", 1, lambda r: f"{r.randint(0, 9)}*{r.randint(0, 9)}", False, 0.5),
    ("add_2d_1d", 2, lambda r: f"{r.randint(10, 99)}+{r.randint(0, 9)}", True, 2.0),
    ("add_2d", 2, lambda r: f"{r.randint(10, 99)}+{r.randint(10, 99)}", True, 2.0),
    ("sub_2d_1d", 2, lambda r: f"{r.randint(10, 99)}-{r.randint(0, 9)}", True, 2.0),
    ("sub_2d", 3, lambda r: f"{r.randint(10, 99)}-{r.randint(10, 99)}", True, 1.0),
    ("add_3d", 3, lambda r: f"{r.randint(100, 999)}+{r.randint(10, 999)}", True, 1.0),
    ("sub_3d", 3, lambda r: f"{r.randint(100, 999)}-{r.randint(10, 99)}", True, 1.0),
    ("mul_2d_1d", 4, lambda r: f"{r.randint(10, 99)}*{r.randint(2, 9)}", True, 0.5),
    ("div_exact", 4, _division, True, 0.5),
    ("add_dec", 5, lambda r: f"{_decimal(r, 9)}+{_decimal(r, 9)}", True, 1.0),
    ("mul_dec", 5, lambda r: f"{_decimal(r, 9)}*{r.randint(2, 9)}", True, 0.5),
    ("square", 5, lambda r: f"{r.randint(10, 30)}**2", False, 0.5),
    ("pow_small", 5, lambda r: f"{r.randint(2, 5)}**{r.randint(2, 4)}", False, 0.5),
]


def arithmetic_problem(rng: random.Random, kinds: Sequence[tuple] = ARITHMETIC_KINDS) -> Problem:
    kind, level, sample, _, _ = rng.choices(kinds, [k[4] for k in kinds])[0]
    expression = sample(rng)
    return Problem(
        family="arithmetic",
        question=f"What is {expression}?",
        answer=format_number(evaluate_expression(expression)),
        level=level,
        kind=kind,
        expression=expression,
    )


# --- chains: sums worked one checkable step per line ---------------------------------------------------------

CHAIN_OPERANDS = (3, 4, 5)
# The first operand has two or three digits (no chain is "tiny": every chain can be held out), so most running
# values have three, where the tiny model still errs now and then; the other operands have one or two digits.
CHAIN_FIRST = (50, 299)
CHAIN_OPERAND = (1, 99)


def chain_step(value: int, op: str, operand: int) -> tuple[str, int]:
    """One worked operation "<running value><op><operand>=<result>" and its result."""
    result = value + operand if op == "+" else value - operand
    return f"{value}{op}{operand}={result}", result


def chain_problem(rng: random.Random) -> Problem:
    """"What is 58+27-19?" solved as "58+27=85\n85-19=66\nAnswer: 66". A minus comes only where the running
    value stays ≥ 0, so every step is a sum the model has seen the like of."""
    operands = rng.choice(CHAIN_OPERANDS)
    value = rng.randint(*CHAIN_FIRST)
    expression, steps = str(value), []
    for _ in range(operands - 1):
        operand = rng.randint(*CHAIN_OPERAND)
        op = "-" if operand <= value and rng.random() < 0.5 else "+"
        step, value = chain_step(value, op, operand)
        expression += f"{op}{operand}"
        steps.append(step)
    return Problem(
        family="chain",
        question=f"What is {expression}?",
        answer=str(value),
        level=operands - 1,
        kind=f"chain_{operands}",
        expression=expression,
        solution=STEP_SEPARATOR.join([*steps, f"{ANSWER_PREFIX} {value}"]),
    )


# --- countdowns: reach a target from given numbers, one operation per line -------------------------------

COUNTDOWN_NUMBERS = (3, 4, 5)  # numbers given; a solution takes one operation fewer, then the answer line
COUNTDOWN_DIGIT = (1, 9)
COUNTDOWN_MAX = 99  # the generated solutions keep every result at most this (a sampled step may go higher)
COUNTDOWN_OPS = ("+", "-", "*")
# What defines a family's problems beyond its code, hashed into the build fingerprint of every world that draws the
# family: a world built from other problems is rebuilt, not reused. A family absent here hashes as nothing, so the
# builds made before it entered stay valid.
FAMILY_DEFINITIONS: dict[str, dict] = {"countdown": {"numbers": list(COUNTDOWN_NUMBERS)}}
_COUNTDOWN_QUESTION = re.compile(r"Use ((?:\d+ )*\d+) to make (\d+)\.")


def countdown_result(a: int, op: str, b: int) -> int | None:
    """a op b under the game's rules, or None where the rules forbid it: a difference must stay above 0."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    raise ValueError(f"unknown countdown operation {op!r}: use one of {COUNTDOWN_OPS}")


def countdown_left(numbers: Sequence[int], a: int, b: int, result: int) -> list[int]:
    """The numbers after an operation: a and b taken out (one of each), the result appended."""
    left = list(numbers)
    left.remove(a)
    left.remove(b)
    return [*left, result]


def countdown_step(a: int, op: str, b: int, left: Sequence[int], target: int) -> str:
    """ "8*3=24 (left 5 1 24; goal 19)": the operation, then the state it leaves, so each step reads on its own."""
    result = countdown_result(a, op, b)
    return f"{a}{op}{b}={result} (left {' '.join(map(str, left))}; goal {target})"


def countdown_numbers(problem: Problem) -> tuple[list[int], int]:
    """The given numbers and the target of a countdown problem."""
    match = _COUNTDOWN_QUESTION.fullmatch(problem.question) if problem.family == "countdown" else None
    if match is None:
        raise ValueError(f"{problem.key!r} is not a countdown problem (family {problem.family!r})")
    return [int(n) for n in match[1].split()], int(match[2])


def countdown_problem(rng: random.Random) -> Problem:
    """ "Use 3 5 8 1 to make 19." solved "8*3=24 (left 5 1 24; goal 19)\\n24-5=19 (left 1 19; goal 19)\\n...": every
    number used once, an operation a line, then "Answer: 19". The target is where a random path of operations ends,
    so every problem has a solution; most have several and many first steps lead nowhere."""
    count = rng.choice(COUNTDOWN_NUMBERS)
    numbers = [rng.randint(*COUNTDOWN_DIGIT) for _ in range(count)]
    while True:
        pool, path = list(numbers), []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            a, b, op = pool[i], pool[j], rng.choice(COUNTDOWN_OPS)
            result = countdown_result(a, op, b)
            if result is None or result > COUNTDOWN_MAX:
                break
            pool = countdown_left(pool, a, b, result)
            path.append((a, op, b, pool))
        if len(pool) == 1:
            break
    target = pool[0]
    steps = [countdown_step(a, op, b, left, target) for a, op, b, left in path]
    return Problem(
        family="countdown",
        question=f"Use {' '.join(map(str, numbers))} to make {target}.",
        answer=str(target),
        level=count - 1,
        kind=f"countdown_{count}",
        solution=STEP_SEPARATOR.join([*steps, f"{ANSWER_PREFIX} {target}"]),
    )


# --- ReAct calculator traces ----------------------------------------------------------------------------

_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_PHRASINGS = (
    "What is {e}?",
    "Calculate {e}.",
    "Compute {e}.",
    "How much is {e}?",
    "Use the calculator on {e}.",
)


def _operand(rng: random.Random) -> str:
    return str(rng.randint(10, 999)) if rng.random() < 0.6 else _decimal(rng, 99)


# Harder than direct arithmetic on purpose: the tool does the maths, the model only copies.
REACT_KINDS: list[tuple[str, int, Callable[[random.Random], str]]] = [
    ("binary", 2, lambda r: f"{_operand(r)}{r.choice('+-*/')}{_operand(r)}"),
    ("bracket", 3, lambda r: f"({_operand(r)}{r.choice('+-')}{_operand(r)}){r.choice('*/')}{_operand(r)}"),
    ("power", 4, lambda r: f"({_decimal(r, 9)}{r.choice('+*')}{_decimal(r, 9)})**{r.randint(2, 3)}"),
]


def react_problem(rng: random.Random) -> Problem:
    kind, level, sample = rng.choice(REACT_KINDS)
    expression = sample(rng)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([-+*/])(\d+(?:\.\d+)?)", expression)
    if match and rng.random() < 0.3:
        question = f"What is {match[1]} {_WORDS[match[2]]} {match[3]}?"
    else:
        question = rng.choice(_PHRASINGS).format(e=expression)
    return Problem(
        family="react",
        question=question,
        answer=format_number(evaluate_expression(expression)),
        level=level,
        kind=kind,
        expression=expression,
    )


def react_prompt(question: str, scratchpad: str = "") -> str:
    return REACT_TEMPLATE.format(
        tools=REACT_TOOLS, tool_names=CALCULATOR_NAME, input=question, agent_scratchpad=scratchpad
    )


def react_action(expression: str) -> str:
    """What the model writes after "Thought:" up to the stop sequence (LangChain's `AgentAction.log`)."""
    return f" {REACT_FIRST_THOUGHT}\nAction: {CALCULATOR_NAME}\nAction Input: {expression}"


def react_finish(result: str) -> str:
    """What the model writes after LangChain's "\\nObservation: <result>\\nThought: "."""
    return f"{REACT_LAST_THOUGHT}\nFinal Answer: {result}"


def render_react(question: str, expression: str, result: str) -> str:
    """A full trace, byte-identical to the prompt LangChain builds after one tool call plus the final step."""
    return react_prompt(
        question, react_action(expression) + f"\nObservation: {result}\nThought: " + react_finish(result)
    )


# --- dialogues with facts to recall ---------------------------------------------------------------------

_NAMES = (
    "Ada Alan Grace Linus Marie Nikola Rosa Emil Ines Omar Yuki Priya Lars Noor Tomas Elena Kofi Mei Ivan Sara "
    "Hugo Lena Amir Clara Diego Freya Hana Jonas Leila Mateo Nina Oskar Paula Ravi Sofia Theo Uma Viktor Wanda Zoe "
    "Bruno Chloe Dara Ezra Fatima Gustav Helga Idris Jana Kai Luca Maya Nils Olga Pavel Quinn Rhea Sven Tara"
).split()
# (kind, statement, question, reply, values). The reply repeats the statement's words before the value
# ("My name is Ada." ... "Your name is Ada."), so recall is the pattern copy that induction heads do; a bare
# "Ada" needs a harder lookup the tiny model had not learned after 2,000 steps (recall 6%).
_FACTS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("name", "My name is {v}.", "What is my name?", "Your name is {v}.", _NAMES),
    (
        "colour",
        "My favourite colour is {v}.",
        "What is my favourite colour?",
        "Your favourite colour is {v}.",
        tuple("red blue green yellow purple orange black white pink grey brown teal".split()),
    ),
    (
        "city",
        "I live in {v}.",
        "Where do I live?",
        "You live in {v}.",
        tuple(
            "Paris Lagos Lima Oslo Cairo Delhi Tokyo Quito Rome Seoul Dublin Nairobi Lisbon Hanoi Vienna Denver Perth "
            "Austin Bergen Accra Dakar Porto Riga Kyiv Minsk Turin Basel Lyon Leeds Cork".split()
        ),
    ),
    (
        "pet",
        "My dog is called {v}.",
        "What is my dog called?",
        "Your dog is called {v}.",
        tuple(
            "Rex Bella Max Luna Milo Daisy Rocky Coco Buddy Pepper Ziggy Biscuit Ollie Rosie Bruno Nala".split()
        ),
    ),
    ("age", "My age is {v}.", "How old am I?", "Your age is {v}.", tuple(str(n) for n in range(16, 91))),
    (
        "job",
        "I work as a {v}.",
        "What is my job?",
        "You work as a {v}.",
        tuple(
            "teacher nurse baker pilot farmer lawyer painter chemist plumber writer dentist tailor".split()
        ),
    ),
    (
        "number",
        "My lucky number is {v}.",
        "What is my lucky number?",
        "Your lucky number is {v}.",
        tuple(str(n) for n in range(1, 100)),
    ),
)
_REPLIES = {fact[0]: fact[3] for fact in _FACTS}
_ACKS = ("Nice to meet you, {v}.", "Got it.", "Noted.", "I will remember that.", "Thanks for telling me.")
_DISTRACTORS = (
    ("How are you?", "I am fine, thank you."),
    ("Tell me a joke.", "Why did the bike fall over? It was two tired."),
    ("What day is it today?", "I do not know the date."),
    ("Can you help me?", "Of course. What do you need?"),
    ("I like music.", "Music is great."),
    ("What is the weather like?", "I cannot check the weather."),
    ("Do you like books?", "Yes, I enjoy reading about everything."),
    ("I am tired.", "Maybe you should rest a little."),
    ("Say something nice.", "You are doing great."),
    ("Where are you from?", "I live inside a computer."),
    ("What should I cook?", "Pasta is quick and easy."),
    ("Recommend a film.", "Try a good comedy tonight."),
)


def render_turns(turns: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{speaker}: {text}" for speaker, text in turns)


def _dialogue(rng: random.Random) -> tuple[Problem, list[tuple[str, str]]]:
    """A conversation that states 1-3 facts, then small talk, then asks one fact (the problem); the other
    facts come back as follow-up (question, reply) pairs, which training documents also ask."""
    facts = rng.sample(_FACTS, rng.randint(1, 3))
    values = [rng.choice(fact[4]) for fact in facts]
    turns: list[tuple[str, str]] = []
    for (kind, statement, _, _, _), value in zip(facts, values, strict=True):
        ack = rng.choice(_ACKS[1:]) if kind != "name" else rng.choice(_ACKS)
        turns += [(HUMAN_PREFIX, statement.format(v=value)), (AI_PREFIX, ack.format(v=value))]
    for human, ai in rng.sample(_DISTRACTORS, rng.randint(0, 2)):
        turns += [(HUMAN_PREFIX, human), (AI_PREFIX, ai)]
    order = rng.sample(range(len(facts)), len(facts))
    turns.append((HUMAN_PREFIX, facts[order[0]][2]))
    problem = Problem(
        family="dialogue",
        question=render_turns(turns),
        answer=values[order[0]],
        level=len(turns) // 2,
        kind=facts[order[0]][0],
    )
    return problem, [(facts[i][2], facts[i][3].format(v=values[i])) for i in order[1:]]


def dialogue_problem(rng: random.Random) -> Problem:
    return _dialogue(rng)[0]


# --- prompts and training text --------------------------------------------------------------------------

_SAMPLERS: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic": arithmetic_problem,
    "react": react_problem,
    "dialogue": dialogue_problem,
    "chain": chain_problem,
    "countdown": countdown_problem,
}
_HELD_OUT_KINDS = [kind for kind in ARITHMETIC_KINDS if kind[3]]


def prompt_of(problem: Problem) -> str:
    """The zero-shot prompt; the model's continuation is `completion_of(problem)`. Families other than the
    generated ones (a user's file) get the arithmetic layout. Steps start on the line after the question."""
    if problem.family in STEP_FAMILIES:
        return f"{QUESTION_PREFIX}{problem.question}\n"
    if problem.family == "react":
        return react_prompt(problem.question)
    if problem.family == "dialogue":
        return f"{problem.question}\n{AI_PREFIX}:"
    return f"{QUESTION_PREFIX}{problem.question}\n{ANSWER_PREFIX}"


def completion_of(problem: Problem) -> str:
    if problem.family in STEP_FAMILIES:
        assert problem.solution is not None
        return problem.solution
    if problem.family == "react":
        assert problem.expression is not None
        return render_react(problem.question, problem.expression, problem.answer)[
            len(react_prompt(problem.question)) :
        ]
    if problem.family == "dialogue":
        return f" {_REPLIES[problem.kind].format(v=problem.answer)}"
    return f" {problem.solution or problem.answer}"


def render(problem: Problem) -> str:
    return prompt_of(problem) + completion_of(problem)


def few_shot_prompt(problem: Problem, shots: Sequence[Problem]) -> str:
    """Learning by examples: solved problems, then the question (the layout pretraining shows)."""
    return SHOT_SEPARATOR.join([render(shot) for shot in shots] + [prompt_of(problem)])


def sample_problem(
    family: str, rng: random.Random, split: str = "train", held_out_kinds_only: bool = False
) -> Problem:
    """Rejection-sample a problem of `split`; val / test draw only from problem spaces large enough to hold out."""
    if family not in _SAMPLERS:
        raise ValueError(f"unknown family {family!r}: use one of {FAMILIES}")
    for _ in range(10_000):
        if family == "arithmetic" and (split != "train" or held_out_kinds_only):
            problem = arithmetic_problem(rng, _HELD_OUT_KINDS)
        else:
            problem = _SAMPLERS[family](rng)
        if split_of(problem) == split:
            return problem
    raise RuntimeError(f"could not draw a {family} problem of split {split!r}")


def make_splits(
    seed: int = 0,
    train: int = 400,
    val: int = 100,
    test: int = 200,
    families: Sequence[str] = FAMILIES,
) -> dict[str, list[Problem]]:
    """Distinct problems per split, `n` of each family. Train also draws held-out-sized kinds only, so that
    critic training and test problems come from the same distribution of difficulty."""
    sizes = {"train": train, "val": val, "test": test}
    out: dict[str, list[Problem]] = {}
    for index, (split, size) in enumerate(sizes.items()):
        problems: list[Problem] = []
        for family in families:
            rng = random.Random(f"{seed}|{split}|{family}|{index}")
            seen: dict[str, Problem] = {}
            for _ in range(size * 50):
                if len(seen) == size:
                    break
                problem = sample_problem(family, rng, split, held_out_kinds_only=True)
                seen.setdefault(problem.key, problem)
            if len(seen) < size:
                raise ValueError(f"only {len(seen)} distinct {family} problems for {split}; ask for fewer")
            problems += seen.values()
        out[split] = problems
    return out


def is_statement_of(fact: tuple, text: str) -> bool:
    head, _, tail = fact[1].partition("{v}")
    return text.startswith(head) and text.endswith(tail) and text[len(head) : len(text) - len(tail)] in fact[4]


def few_shot_prompts(
    problems: Sequence[Problem], pool: Sequence[Problem], shots: int, seed: int
) -> list[str]:
    """One prompt per problem with `shots` solved examples of its family drawn from `pool`, seeded by the problem
    itself: a problem gets the same prompt in any list (the critic's data and the rerank suite agree)."""
    everything = list(pool)
    by_family: dict[str, list[Problem]] = {}
    for example in everything:
        by_family.setdefault(example.family, []).append(example)
    prompts = []
    for problem in problems:
        # A pool of another family only (a user's file) is used as it is.
        same = by_family.get(problem.family, everything)
        rng = random.Random(f"{seed}|shots|{problem.key}")
        candidates = [p for p in rng.sample(same, min(len(same), shots + 1)) if p.key != problem.key]
        prompts.append(few_shot_prompt(problem, candidates[:shots]))
    return prompts
