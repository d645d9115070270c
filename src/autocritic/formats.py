"""The text formats that every layer shares: prompt prefixes, stop sequences, the ReAct template, numbers.

The offline world pretrains its model on exactly these layouts (`autocritic.offline.tasks`), and inference and
evaluation render and parse the same text with them, so they live here, apart from the toy world that uses them.
"""

from __future__ import annotations

import math

QUESTION_PREFIX = "Question: "
ANSWER_PREFIX = "Answer:"
SHOT_SEPARATOR = "\n\n"
# Worked solutions write one step per line; the last step is "Answer: <final answer>".
STEP_SEPARATOR = "\n"
ARITHMETIC_STOP = ("\n",)

CALCULATOR_NAME = "Calculator"
CALCULATOR_DESCRIPTION = "evaluates arithmetic such as (4.5*2.1)**2"
# LangChain's zero-shot ReAct variables ({tools}, {tool_names}, {input}, {agent_scratchpad}), with a short
# header: the tiny model reads every token of it, and LangChain's scratchpad ends "Thought: " exactly as here.
REACT_TEMPLATE = (
    "Answer the question with a tool.\n"
    "Tools: {tools}\n"
    "Tool names: {tool_names}\n\n"
    "Question: {input}\n"
    "Thought:{agent_scratchpad}"
)
REACT_TOOLS = f"{CALCULATOR_NAME}: {CALCULATOR_DESCRIPTION}"
REACT_STOP = ("\nObservation",)
REACT_FIRST_THOUGHT = "I should use the calculator."
REACT_LAST_THOUGHT = "I now know the final answer."

HUMAN_PREFIX = "Human"
AI_PREFIX = "AI"
DIALOGUE_STOP = ("\n",)
# The compact summary prompt of the evaluation's memory suite: "Summary: {summary}\n{new_lines}\nNew summary:".
SUMMARY_PREFIX = "Summary:"
NEW_SUMMARY = "New summary:"


def format_number(value: float, places: int = 4) -> str:
    """Deterministic text for a number: rounded to `places` decimals, no trailing zeros, no exponent, no -0."""
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"cannot format {value!r}")
    text = f"{float(value):.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
