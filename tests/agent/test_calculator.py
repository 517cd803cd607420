import time

import pytest

from natscale.agent.calculator import MAX_EXPRESSION_CHARS, calculate, format_number

CASES = [
    # integers and precedence
    ("2 * 1", "2"),
    ("2 + 3 * 4", "14"),
    ("(2 + 3) * 4", "20"),
    ("2 ** 3 ** 2", "512"),
    ("-2 ** 2", "-4"),
    ("(-2) ** 2", "4"),
    ("10 - 4 - 3", "3"),
    ("100 / 10 / 5", "2"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("-7 % 3", "2"),
    ("+5 - -3", "8"),
    ("--4", "4"),
    ("1_000 * 3", "3000"),
    ("  12 + 3\n", "15"),
    # exact fractions from integer input (as SymPy's Rational prints them)
    ("1/3 * 2", "2/3"),
    ("6 * 2/3", "4"),
    ("10 / 4", "5/2"),
    ("-2 / 6", "-1/3"),
    ("2 ** -2", "1/4"),
    ("1/3 + 1/6", "1/2"),
    # decimal input: exact decimal when it terminates, else {:g}
    ("2.5 * 4", "10"),
    ("0.1 + 0.2", "0.3"),
    ("10 / 4.0", "2.5"),
    ("2 * 1.50", "3"),
    ("19.99 * 3", "59.97"),
    ("370369.5 * 1", "370369.5"),
    ("1 / 8.0", "0.125"),
    ("10 / 3.0", "3.33333"),
    ("1/3 + 0.5", "0.833333"),
    ("80 * 0.15", "12"),
    ("1.5e3 + 1", "1501"),
    ("0.0000001 * 3", "3e-07"),
    ("5. + .5", "5.5"),
    ("-0.25 * 2", "-0.5"),
    # non-integer powers are floating point
    ("2 ** 0.5", "1.41421"),
    ("4 ** 0.5", "2"),
    ("2 ** 2.0", "4"),
]


@pytest.mark.parametrize(("expression", "expected"), CASES)
def test_calculate_values(expression, expected):
    assert calculate(expression) == expected


ERRORS = [
    ("1 / 0", "division by zero"),
    ("5 % (3 - 3)", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("x + 1", "names are not allowed"),
    ("notebooks * 3", "names are not allowed"),
    ("__import__('os').system('true')", "function calls are not allowed"),
    ("abs(-3)", "function calls are not allowed"),
    ("3(4 + 2)", "function calls are not allowed"),
    ("(3).real", "attribute access is not allowed"),
    ("().__class__", "attribute access is not allowed"),
    ("[1, 2][0]", "unsupported syntax"),
    ("1 if 1 else 2", "unsupported syntax"),
    ("1 < 2", "unsupported syntax"),
    ("lambda: 1", "unsupported syntax"),
    ("1,200 * 3", "commas are not allowed"),
    ("2 ^ 3", "use ** for powers"),
    ("'a' * 3", "unsupported constant"),
    ("True + 1", "unsupported constant"),
    ("3j * 2", "unsupported constant"),
    ("4 x 3", "invalid syntax"),
    ("4 × 3", "invalid syntax"),
    ("$4 * 3", "invalid syntax"),
    ("80 * 25%", "invalid syntax"),
    ("4 * 3 =", "invalid syntax"),
    ("(4 * 3", "invalid syntax"),
    ("import os", "invalid syntax"),
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("(-8) ** (1/3)", "not a real number"),
]


@pytest.mark.parametrize(("expression", "message"), ERRORS)
def test_calculate_errors(expression, message):
    result = calculate(expression)
    assert result.startswith("Error: "), result
    assert message in result


TOO_BIG = "Error: result too large (more than 4096 bits)"
HOSTILE = [
    ("9 ** 9 ** 9", TOO_BIG),
    ("2 ** 2 ** 2 ** 2 ** 2", TOO_BIG),
    ("10 ** 10 ** 10", TOO_BIG),
    ("(10 ** 1000) ** 1000", TOO_BIG),
    ("2 ** 4096", TOO_BIG),
    ("1e999999999 * 2", "Error: number '1e999999999' is out of range"),
    ("1.5e-999999999", "Error: number '1.5e-999999999' is out of range"),
    ("7 " + "* 99999999999999999999 " * 20, str(7 * 99999999999999999999**20)),
    (
        "1" * (MAX_EXPRESSION_CHARS + 1),
        "Error: expression too long (501 characters; the limit is 500)",
    ),
    ("1+" * 5000 + "1", "Error: expression too long (10001 characters; the limit is 500)"),
    ("(" * 300 + "1" + ")" * 300, "Error: expression too long (601 characters; the limit is 500)"),
    ("-" * (MAX_EXPRESSION_CHARS - 1) + "1", "-1"),  # exactly at the limit: still evaluated
    ("10.0 ** 400 * 10.0 ** 400 + 2 ** 0.5", "Error: result too large"),
]


@pytest.mark.parametrize(("expression", "expected"), HOSTILE)
def test_hostile_input_fails_fast(expression, expected):
    start = time.perf_counter()
    result = calculate(expression)
    elapsed = time.perf_counter() - start
    # Generous bound for a busy shared machine; these take well under 10 ms normally.
    assert elapsed < 1.0, (expression[:40], elapsed)
    assert result == expected, result[:80]


def test_hostile_powers_and_lengths_are_errors():
    for expression in ("9 ** 9 ** 9", "2 ** 4096", "1e999999999 * 2", "1" * 600, "1+" * 5000 + "1"):
        assert calculate(expression).startswith("Error: "), expression[:40]


def test_non_string_input_is_an_error():
    assert calculate(12).startswith("Error: ")  # type: ignore[arg-type]


def test_format_number_out_of_float_range_keeps_magnitude():
    assert calculate("1e-400 * 2") == "2e-400"
    assert calculate("10 ** 300 / 7.0") == "1.42857e+299"
    assert format_number(2.0) == "2"
    assert format_number(0.5) == "0.5"
