"""A safe arithmetic evaluator: integers, ``+ - * /`` and parentheses, exact fractions.

Model-written text is parsed with :mod:`ast` and walked node by node; nothing is ever
passed to ``eval``. Anything but integer literals, the four operators, unary signs and
parentheses is refused with a message saying what was found. Work is bounded before and
during evaluation: at most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax nodes,
literals up to :data:`MAX_LITERAL`, and every intermediate numerator and denominator up to
:data:`MAX_MAGNITUDE` — so no input (``9**9**9``, a 10 000-character product) can make it
slow. Division is exact (:class:`fractions.Fraction`); dividing by zero is an error.

>>> evaluate("3 * (4 + 2)")
Fraction(18, 1)
>>> format_value(evaluate("7 / 2"))
'7/2'
>>> evaluate("__import__('os')")
Traceback (most recent call last):
...
envs.countdown.calculator.CalculatorError: function calls are not allowed: only integers, + - * / and parentheses
"""

from __future__ import annotations

import ast
import dataclasses
from fractions import Fraction

__all__ = [
    "CalculatorError",
    "Evaluation",
    "MAX_LENGTH",
    "MAX_LITERAL",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "evaluate",
    "evaluate_detailed",
    "format_value",
]

MAX_LENGTH = 200
"""Longest expression accepted, in characters."""
MAX_NODES = 100
"""Most syntax-tree nodes accepted (numbers, operators, ...)."""
MAX_LITERAL = 10**9
"""Largest integer literal accepted."""
MAX_MAGNITUDE = 10**18
"""Largest numerator or denominator allowed in any intermediate result."""

_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_NODE_NAMES = {
    ast.Call: "function calls are",
    ast.Name: "names are",
    ast.Attribute: "attribute access is",
    ast.Subscript: "indexing is",
    ast.Lambda: "lambdas are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "boolean operators are",
    ast.IfExp: "conditional expressions are",
    ast.JoinedStr: "f-strings are",
    ast.List: "lists are",
    ast.Tuple: "tuples are",
    ast.Dict: "dicts are",
    ast.Set: "sets are",
}
_ALLOWED_HINT = "only integers, + - * / and parentheses"


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """Result of :func:`evaluate_detailed`."""

    value: Fraction
    """The exact value."""
    literals: tuple[int, ...]
    """The integer literals of the expression, in order (to check which numbers were used)."""
    uses_unary: bool
    """Whether a unary ``+``/``-`` appears."""


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression.

    Raises:
        CalculatorError: the expression is too long, malformed, uses anything but integers,
            ``+ - * /`` and parentheses, divides by zero, or grows too large.
    """
    return evaluate_detailed(expression).value


def evaluate_detailed(expression: str) -> Evaluation:
    """Like :func:`evaluate`, also returning the literals used (see :class:`Evaluation`)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    # Models write these; they are unambiguous, so accept them.
    text = expression.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"the expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if "=" in text:
        raise CalculatorError("write only the expression, without '='")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        detail = getattr(e, "msg", None) or str(e) or type(e).__name__
        raise CalculatorError(f"cannot parse {text!r}: {detail}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise CalculatorError(f"the expression has {len(nodes)} syntax nodes; the limit is {MAX_NODES}")
    for node in nodes:  # refuse before evaluating anything
        _check_node(node)
    literals: list[int] = []
    uses_unary = any(isinstance(node, ast.UnaryOp) for node in nodes)
    value = _eval(tree.body, literals)
    return Evaluation(value=value, literals=tuple(literals), uses_unary=uses_unary)


def format_value(value: Fraction) -> str:
    """``"18"`` for whole numbers, ``"7/2"`` otherwise (exact, never a rounded decimal)."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _check_node(node: ast.AST) -> None:
    if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Load)):
        if isinstance(node, ast.BinOp) and type(node.op) not in _OPERATORS:
            symbol = {ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%", ast.BitXor: "^"}.get(
                type(node.op), type(node.op).__name__
            )
            raise CalculatorError(f"the operator {symbol!r} is not allowed: {_ALLOWED_HINT}")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, (ast.UAdd, ast.USub)):
            raise CalculatorError(f"the operator {type(node.op).__name__} is not allowed: {_ALLOWED_HINT}")
        return
    if isinstance(node, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.UAdd, ast.USub)):
        return
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            kind = "decimal numbers" if isinstance(value, float) else f"{type(value).__name__} values"
            raise CalculatorError(f"{kind} are not allowed: {_ALLOWED_HINT} (write 5/2 for 2.5)")
        if value > MAX_LITERAL:
            raise CalculatorError(f"the number {value} is too large (limit {MAX_LITERAL})")
        return
    if isinstance(node, ast.operator):
        return  # checked on its BinOp, which names the symbol
    what = _NODE_NAMES.get(type(node), f"{type(node).__name__} is")
    raise CalculatorError(f"{what} not allowed: {_ALLOWED_HINT}")


def _eval(node: ast.expr, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Constant):
        value = node.value
        assert isinstance(value, int)  # _check_node admitted only int literals
        literals.append(value)
        return Fraction(value)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, literals)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _eval(node.left, literals)
        right = _eval(node.right, literals)
        if isinstance(node.op, ast.Add):
            result = left + right
        elif isinstance(node.op, ast.Sub):
            result = left - right
        elif isinstance(node.op, ast.Mult):
            result = left * right
        else:
            if right == 0:
                raise CalculatorError("division by zero")
            result = left / right
        if abs(result.numerator) > MAX_MAGNITUDE or result.denominator > MAX_MAGNITUDE:
            raise CalculatorError(f"an intermediate result exceeds {MAX_MAGNITUDE:.0e}")
        return result
    raise CalculatorError(f"{type(node).__name__} is not allowed: {_ALLOWED_HINT}")  # pragma: no cover
