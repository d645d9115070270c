"""The safe calculator: right answers, trace-identical formatting, and injection attempts refused unexecuted."""

from __future__ import annotations

import ast
import builtins
import math
import time
from pathlib import Path

import pytest

from autocritic import formats
from autocritic.inference import calculator
from autocritic.inference.calculator import CalculatorError, calculate, calculator_tool, evaluate_expression
from autocritic.offline import tasks


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("(4.5*2.1)^2.2", 9.45**2.2),  # the notebook's question: ^ is power, not XOR
        ("(4.5*2.1)**2.2", 9.45**2.2),
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("2^3^2", 512),  # right-associative, as **
        ("-2^2", -4),  # unary minus binds looser than power, as in Python
        ("--3", 3),
        ("-(2+3)*+2", -10),
        ("7/2", 3.5),
        ("7//2", 3),
        ("-7 % 3", 2),
        ("2**-1", 0.5),
        ("10**100 // 10**99", 10),
        ("sqrt(16)", 4.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("log2(8)", 3.0),
        ("exp(0)", 1.0),
        ("sin(pi/2)", 1.0),
        ("cos(0) + tan(0)", 1.0),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("floor(2.7) + ceil(2.1)", 5),
        ("factorial(5)", 120),
        ("2*pi", 2 * math.pi),
        ("  1 + 1\n", 2),
        ("(" * 90 + "1" + ")" * 90, 1),
    ],
)
def test_results(expr, expected):
    value = evaluate_expression(expr)
    assert value == pytest.approx(expected, rel=1e-12)
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "expr, text",
    [
        ("(4.5*2.1)^2.2", "139.9426"),
        ("2+3", "5"),
        ("7/2", "3.5"),
        ("1/3", "0.3333"),
        ("sqrt(16)", "4"),
        ("2*pi", "6.2832"),
        ("-0.00001", "0"),
        ("3**40", "12157665459056928801"),  # integers stay exact beyond float precision
    ],
)
def test_tool_text(expr, text):
    assert calculate(expr) == text


@pytest.mark.parametrize("expr", ["12+7", "3*(4-1)", "7/3", "2**10", "(4.5*2.1)**2", "100-250", "0.5*0.25"])
def test_observations_match_the_training_traces(expr):
    assert calculate(expr) == formats.format_number(tasks.evaluate_expression(expr))


INJECTIONS = [
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "(1).real",
    "__import__('os')",
    "__import__('os').system('echo hacked')",
    "__builtins__",
    "__name__",
    "import os",
    "lambda: 1",
    "(lambda: 1)()",
    "[x for x in (1, 2)]",
    "(x for x in (1,))",
    "{x: 1 for x in (1,)}",
    "[1, 2][0]",
    "'abc'[0]",
    "'a' * 3",
    "b'x'",
    "f'{1}'",
    "print(1)",
    "eval('1')",
    "exec('x = 1')",
    "getattr(1, 'real')",
    "globals()",
    "open('f')",
    "sqrt(x=4)",
    "sqrt(*(4,))",
    "True + 1",
    "None",
    "...",
    "1j",
    "1 if 1 else 2",
    "1 < 2",
    "1 and 2",
    "(y := 1)",
    "x = 1",
    "~1",
    "1 << 1000",
    "1 & 2",
    "1 | 2",
    "{1}",
    "(1, 2)",
    "sqrt",
    "foo(1)",
    "sqrt(1, 2)",
    "math.sqrt(4)",
]
HUGE = [
    "9**9**9",
    "10**1000",
    "2^1000",
    "(10**100)**100",
    "10.0**400",
    "1e300 * 10",
    "1e400",
    "exp(1000)",
    "factorial(10**6)",
    "factorial(101)",
    "round(5, -10**18)",
    "9**99 * 9**99 * 9**99 * 9**99",
]
INVALID = [
    "",
    "   ",
    "1/0",
    "1 % 0",
    "0**-1",
    "log(0)",
    "sqrt(-1)",
    "(-8)^(1/3)",
    "factorial(-1)",
    "factorial(2.5)",
    "2 +",
    "1 + " * 100 + "1",  # over 200 characters
    "(" * 300 + "1" + ")" * 300,
    "1\x00",
]


@pytest.mark.parametrize("expr", INJECTIONS + HUGE + INVALID)
def test_refused(expr):
    with pytest.raises(CalculatorError):
        evaluate_expression(expr)
    result = calculate(expr)
    assert result.startswith("Error: ") and len(result) < 200


def test_messages_say_why():
    assert "attribute access" in calculate("().__class__")
    assert "double underscores" in calculate("__import__('os')")
    assert "exponent" in calculate("9**9**9")
    assert "too long" in calculate("1+" * 150 + "1")
    assert "empty" in calculate("")
    assert "division by zero" in calculate("1/0")
    assert calculate(None).startswith("Error: ")


def test_huge_inputs_are_refused_before_computing():
    start = time.perf_counter()
    for expr in HUGE:
        calculate(expr)
    assert time.perf_counter() - start < 1.0  # 9**9**9 alone would take minutes and gigabytes


def test_injections_have_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, lambda *args, _name=name: calls.append(_name))
    attempts = [
        "__import__('os').system('touch pwned')",
        "open('pwned', 'w')",
        "exec(\"open('pwned', 'w')\")",
        "eval(\"__import__('os').system('touch pwned')\")",
        "[open('pwned', 'w') for _ in (1,)]",
        "(lambda: open('pwned', 'w'))()",
    ]
    for expr in attempts + INJECTIONS:
        assert calculate(expr).startswith("Error: ")
    assert calculate("(4.5*2.1)^2.2") == "139.9426"
    assert not Path("pwned").exists()
    assert calls == []


def test_the_module_never_calls_eval_exec_or_compile():
    tree = ast.parse(Path(calculator.__file__).read_text())
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "open"}


def test_langchain_tool():
    tool = calculator_tool()
    assert tool.name == "Calculator"
    assert "(4.5*2.1)^2.2" in tool.description
    assert tool.invoke("(4.5*2.1)^2.2") == "139.9426"
    assert tool.invoke("__import__('os')").startswith("Error: ")


def test_react_agent_reads_the_observation():
    """The tool in a zero-shot ReAct loop (langchain_classic), driven by a scripted LLM."""
    from langchain_classic.agents import AgentExecutor, create_react_agent
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.prompts import PromptTemplate

    prompt = PromptTemplate.from_template(
        "Answer with the tools:\n{tools}\nUse: Thought, Action (one of [{tool_names}]), Action Input, "
        "Observation, ..., Final Answer.\nQuestion: {input}\nThought:{agent_scratchpad}"
    )
    llm = FakeListLLM(
        responses=[
            " I should use the calculator.\nAction: Calculator\nAction Input: (4.5*2.1)^2.2",
            " I now know the final answer.\nFinal Answer: 139.9426",
        ]
    )
    tool = calculator_tool()
    executor = AgentExecutor(
        agent=create_react_agent(llm, [tool], prompt), tools=[tool], return_intermediate_steps=True
    )
    result = executor.invoke({"input": "What is (4.5*2.1)^2.2?"})
    [(action, observation)] = result["intermediate_steps"]
    assert action.tool == "Calculator" and observation == "139.9426"
    assert result["output"] == "139.9426"
