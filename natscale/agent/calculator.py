"""Agent tools. ``calculate`` is the ``calculate[expression]`` tool of the math ReAct task.

The NAT paper's calculator is SymPy ``sympify`` + ``simplify``; it never runs Python ``eval``.
This one walks the Python AST of the expression instead, allowing only numbers, ``+ - * / // % **``,
unary ``+``/``-`` and parentheses, and computes exactly with :class:`fractions.Fraction`.

Output (a string, like the paper's tool):

* an integer-valued result prints as an integer: ``18``, ``-4`` (also for decimal input:
  ``2.5 * 4`` gives ``10``, as SymPy's ``"{:g}"`` of ``10.0`` does);
* a non-integer result of integer-only input prints as a reduced fraction, as SymPy's
  ``Rational`` does: ``7/2``, ``-2/3``;
* a non-integer result of input with a decimal literal (``0.5``, ``1e-3``) prints in decimal:
  exactly when the decimal terminates within 15 significant digits (``370369.5``, ``0.125``),
  otherwise ``"{:g}"`` (6 significant digits: ``3.33333``). The paper always uses ``"{:g}"``;
  printing terminating decimals exactly avoids its silent rounding (``370369.5`` -> ``370370``);
* a power with a non-integer exponent (``2 ** 0.5``) is computed in floating point and printed
  with ``"{:g}"``.

Every failure returns a string starting with ``Error:`` and never raises: syntax errors, names,
attribute access, calls, division by zero, and inputs that would be too costly (more than
:data:`MAX_EXPRESSION_CHARS` characters, results beyond :data:`MAX_RESULT_BITS` bits). Error texts
are our own fixed strings (not Python's parser messages, which change between Python versions) so
generated data does not depend on the interpreter.
"""

from __future__ import annotations

import ast
import math
import re
from decimal import Decimal
from fractions import Fraction

MAX_EXPRESSION_CHARS = 500
MAX_RESULT_BITS = 4096  # ~1233 decimal digits, far below Python's 4300-digit str() limit
MAX_DECIMAL_EXPONENT = 400  # |e| in a literal like 1e400; larger would build huge integers

_BINOPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_REJECTED_BINOPS = {
    ast.BitXor: "'^' (use ** for powers)",
    ast.BitAnd: "'&'",
    ast.BitOr: "'|'",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
}
_DECIMAL_LITERAL = re.compile(r"(\d[\d_]*)?(?:\.(\d[\d_]*)?)?(?:[eE]([+-]?\d[\d_]*))?")


class CalculatorError(Exception):
    """Raised inside the evaluator; :func:`calculate` turns it into an ``Error: ...`` string."""


Number = Fraction | float


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression safely and format the result like the paper's tool.

    Returns the result as a string (see the module docstring) or a string starting with
    ``"Error: "``; never raises for any ``str`` input.
    """
    try:
        value, has_decimal = _evaluate(expression)
    except CalculatorError as exc:
        return f"Error: {exc}"
    return format_number(value, decimal=has_decimal)


def format_number(value: Number, *, decimal: bool = False) -> str:
    """Format a result: integer, ``p/q`` fraction, or decimal (``decimal=True`` or a float)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:g}"
    if value.denominator == 1:
        return str(value.numerator)
    if not decimal:
        return f"{value.numerator}/{value.denominator}"
    exact = _terminating_decimal(value, max_digits=15)
    if exact is not None:
        return exact
    try:
        approx = float(value)
    except OverflowError:
        approx = math.inf
    if approx == 0.0 or math.isinf(approx):  # outside the float range: Decimal keeps the magnitude
        return f"{Decimal(value.numerator) / Decimal(value.denominator):.6g}"
    return f"{approx:g}"


def _terminating_decimal(value: Fraction, *, max_digits: int) -> str | None:
    """``value`` in plain decimal notation if it terminates within ``max_digits`` significant
    digits and is not tiny (``>= 1e-6``, below which ``{:g}`` uses an exponent), else None."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1 or abs(value) < Fraction(1, 10**6):
        return None
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    if len(digits.lstrip("0")) > max_digits:
        return None
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _evaluate(expression: str) -> tuple[Number, bool]:
    """Parse and evaluate; return (value, whether the input had a decimal literal)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(
            f"expression too long ({len(text)} characters; the limit is {MAX_EXPRESSION_CHARS})"
        )
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalculatorError(f"invalid syntax in expression '{text}'") from None
    evaluator = _Evaluator(text)
    try:
        value = evaluator.visit(tree.body)
    except RecursionError:
        raise CalculatorError("expression is nested too deeply") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result too large") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    return value, evaluator.has_decimal


class _Evaluator:
    """Evaluates the allowed subset of Python expression nodes; rejects everything else."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.has_decimal = False

    def visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            value = self.visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        raise CalculatorError(_rejection(node))

    def _constant(self, node: ast.Constant) -> Number:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalculatorError(f"unsupported constant {value!r}; only numbers are allowed")
        if isinstance(value, int):
            return _checked(Fraction(value))
        # Exact value of a decimal literal from its source text (0.1 is 1/10, not a binary float).
        self.has_decimal = True
        source = ast.get_source_segment(self.text, node) or repr(value)
        return _decimal_literal(source)

    def _binop(self, node: ast.BinOp) -> Number:
        op_type = type(node.op)
        if op_type in _REJECTED_BINOPS:
            raise CalculatorError(f"unsupported operator {_REJECTED_BINOPS[op_type]}")
        if op_type not in _BINOPS:
            raise CalculatorError(f"unsupported operator {op_type.__name__}")
        left = self.visit(node.left)
        right = self.visit(node.right)
        if op_type is ast.Pow:
            return _power(left, right)
        if isinstance(left, float) or isinstance(right, float):
            left, right = float(left), float(right)
        if op_type is ast.Add:
            result = left + right
        elif op_type is ast.Sub:
            result = left - right
        elif op_type is ast.Mult:
            result = left * right
        elif op_type is ast.Div:
            result = left / right
        elif op_type is ast.FloorDiv:
            result = left // right
        else:
            result = left % right
        return _checked(result)


def _rejection(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"names are not allowed (found '{node.id}'); write numbers only"
    if isinstance(node, ast.Attribute):
        return "attribute access is not allowed"
    if isinstance(node, ast.Call):
        return "function calls are not allowed (write an explicit '*' for multiplication)"
    if isinstance(node, ast.Tuple):
        return "commas are not allowed (write numbers without thousands separators)"
    return f"unsupported syntax ({type(node).__name__})"


def _decimal_literal(source: str) -> Fraction:
    match = _DECIMAL_LITERAL.fullmatch(source)
    if match is None or not (match.group(1) or match.group(2)):
        raise CalculatorError(f"unsupported number '{source}'")
    exponent = int(match.group(3).replace("_", "")) if match.group(3) else 0
    if abs(exponent) > MAX_DECIMAL_EXPONENT:
        raise CalculatorError(f"number '{source}' is out of range")
    return _checked(Fraction(source.replace("_", "")))


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(exponent, Fraction) and exponent.denominator == 1 and isinstance(base, Fraction):
        if base == 0 and exponent < 0:
            raise ZeroDivisionError
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits > 1 and (bits - 1) * abs(exponent.numerator) > MAX_RESULT_BITS:
            raise CalculatorError(f"result too large (more than {MAX_RESULT_BITS} bits)")
        return _checked(base**exponent.numerator)
    # Non-integer exponent (or float operand): irrational in general, so floating point.
    base_f, exponent_f = float(base), float(exponent)
    if base_f < 0 and not exponent_f.is_integer():
        raise CalculatorError("fractional power of a negative number is not a real number")
    try:
        result = math.pow(base_f, exponent_f)
    except ValueError:
        raise ZeroDivisionError from None  # math.pow(0.0, -x)
    return _checked(result)


def _checked(value: Number | int) -> Number:
    """Reject results too large to compute with further (bounds every intermediate value)."""
    if isinstance(value, int):  # Fraction // Fraction returns an int
        value = Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("result too large")
        return value
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_RESULT_BITS:
        raise CalculatorError(f"result too large (more than {MAX_RESULT_BITS} bits)")
    return value
