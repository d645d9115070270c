"""A safe calculator tool for agents: arithmetic parsed with `ast` and evaluated node by node, never by eval/exec.

It replaces LangChain's `llm-math` (LLMMathChain over `numexpr.evaluate`, CVE-2023-29374, CVE-2023-39631).
Allowed: int/float numbers, unary + -, binary + - * / // % ** (`^` is read as power, as in "(4.5*2.1)^2.2"),
parentheses, `pi`, `e` and calls to a few math functions. Every operation is bounded before it runs (input
length, exponent, result size, factorial argument), so no input can run long or allocate much.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from autocritic.formats import format_number  # the training traces' format: Observations match them

if TYPE_CHECKING:
    from langchain_core.tools import Tool

MAX_LENGTH = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e300  # compared exactly with ints too: no int of more than 301 digits is ever kept
MAX_FACTORIAL = 100
MAX_ROUND_DIGITS = 15

DESCRIPTION = "Useful for arithmetic. Input: a single arithmetic expression such as (4.5*2.1)^2.2"

Number = int | float


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why in a few words."""


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (at most {MAX_EXPONENT} in absolute value)")
    # Checked before computing: 10**100 is cheap, (10**100)**100 is not.
    if base != 0 and math.log10(abs(base)) * exponent > math.log10(MAX_MAGNITUDE):
        raise CalculatorError("result is too large")
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("a negative number to a fractional power is not a real number")
    return base**exponent


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError("factorial needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial argument {n} is too large (at most {MAX_FACTORIAL})")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    # round(5, -10**18) would compute 10**(10**18): bound the digits.
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round takes a whole number of digits, at most {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),  # log(x) is natural, log(x, base)
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "factorial": (_factorial, 1, 1),
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_SYNTAX_NAMES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "if/else",
    ast.NamedExpr: "assignments",
}


def evaluate_expression(expr: str) -> Number:
    """The value of an arithmetic expression; raises CalculatorError for anything else."""
    if not isinstance(expr, str):
        raise CalculatorError("the expression must be a string")
    text = expr.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"expression is too long ({len(text)} characters, at most {MAX_LENGTH})")
    try:
        # `^` is XOR in Python and never allowed here, so reading every `^` as `**` breaks nothing.
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError(f"not an arithmetic expression: {text[:50]!r}") from None
    try:
        return _evaluate(tree.body)
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except RecursionError:
        raise CalculatorError("expression is nested too deeply") from None
    except (ArithmeticError, ValueError, TypeError) as error:  # math domain errors, overflow in exp(...)
        raise CalculatorError(f"math error: {error}") from None


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool, str, bytes, complex, None, ...
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _bounded(node.value)
    if isinstance(node, ast.Name):
        return _name(node.id)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        return _bounded(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        return _call(node)
    what = _SYNTAX_NAMES.get(type(node), type(node).__name__)
    raise CalculatorError(f"{what} not allowed: only numbers, + - * / // % ^, parentheses and math functions")


def _name(name: str) -> float:
    if name in CONSTANTS:
        return CONSTANTS[name]
    _refuse_dunder(name)
    if name in FUNCTIONS:
        raise CalculatorError(f"{name} is a function: call it, e.g. {name}(2)")
    raise CalculatorError(f"unknown name {name!r}: allowed are pi, e and {', '.join(FUNCTIONS)}")


def _refuse_dunder(name: str) -> None:
    if "__" in name:
        raise CalculatorError("names with double underscores are not allowed")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        raise CalculatorError(f"only these functions can be called: {', '.join(FUNCTIONS)}")
    name = node.func.id
    if name not in FUNCTIONS:
        _refuse_dunder(name)
        raise CalculatorError(f"unknown function {name!r}: allowed are {', '.join(FUNCTIONS)}")
    function, fewest, most = FUNCTIONS[name]
    if node.keywords:
        raise CalculatorError("keyword arguments are not allowed")
    if not fewest <= len(node.args) <= most:
        count = str(fewest) if fewest == most else f"{fewest} or {most}"
        raise CalculatorError(f"{name} takes {count} argument{'s' if most > 1 else ''}")
    args = [_evaluate(arg) for arg in node.args]  # a starred argument fails here as unsupported syntax
    return _bounded(function(*args))


def _bounded(value: Number) -> Number:
    if not isinstance(value, int | float):  # complex or anything unexpected
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("result is too large")
    return value


def calculate(expr: str) -> str:
    """The tool: the value as text (integers exact, floats to 4 decimals as in the traces) or "Error: ..."."""
    try:
        value = evaluate_expression(expr)
    except CalculatorError as error:
        return f"Error: {error}"
    # str() keeps integers above 2**53 exact; below that it is what format_number writes.
    return str(value) if isinstance(value, int) else format_number(value)


def calculator_tool(description: str = DESCRIPTION) -> Tool:
    """The calculator as a LangChain `Tool` named "Calculator" (one string input, for ReAct agents)."""
    from langchain_core.tools import Tool

    return Tool(name="Calculator", func=calculate, description=description)
