"""argparse ``type=`` callables: a bad value is a usage error (exit 2, the accepted form named).

argparse turns ``ArgumentTypeError`` into ``natscale CMD: error: argument --X: MESSAGE`` and exit
status 2, before any work starts (no traceback, nothing written).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

# decimal units as huggingface_hub / save_pretrained read them ("5GB" = 5 * 10**9), binary
# units as powers of 1024
SIZE_UNITS = {
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
SIZE_HELP = "a number with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (of 1024)"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*$")


def size_bytes(text: str) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"2GiB"`` -> 2_147_483_648; a bare number is refused.

    A bare number is ambiguous (bytes? megabytes?), so the unit is required.
    """
    match = _SIZE.match(text)
    if match is None:
        hint = " (the unit is required)" if re.fullmatch(r"\s*[\d.]+\s*", text) else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size{hint}: expected {SIZE_HELP}, e.g. 5GB, 500MB or 2GiB"
        )
    value, unit = float(match.group(1)), match.group(2).upper()
    if unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown unit {match.group(2)!r}; expected {SIZE_HELP}, e.g. 5GB"
        )
    size = int(value * SIZE_UNITS[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the size must be at least 1 byte; expected {SIZE_HELP}, e.g. 5GB"
        )
    return size


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An ``int`` type that refuses values below ``minimum`` (``why`` says the reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number (expected an integer >= {minimum})"
            ) from None
        if value < minimum:
            reason = f": {why}" if why else ""
            raise argparse.ArgumentTypeError(
                f"{value} is too small; the minimum is {minimum}{reason}"
            )
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def float_in(
    low: float, high: float = math.inf, *, low_open: bool = True, high_open: bool = False
) -> Callable[[str], float]:
    """A finite ``float`` type between ``low`` and ``high`` (open or closed ends)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            left = "(" if low_open else "["
            right = "inf)" if math.isinf(high) else f"{high:g}" + (")" if high_open else "]")
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: expected a number in {left}{low:g}, {right}"
            )
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
positive_float = float_in(0.0)


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (expected 1-65535)")
    return value


def path_text(text: str) -> str:
    """A file or folder path; an empty or blank one is refused.

    ``--out ""`` would otherwise mean the current directory (or, for an option with a config
    default, silently the default), and ``--out " "`` a folder named by a space.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give a path")
    return text


def folder(text: str) -> Path:
    """``path_text`` as a ``Path``."""
    return Path(path_text(text))
