"""The one error type of ``natscale eval`` for bad input (the CLI exits 2 with its message)."""

from __future__ import annotations


class EvalError(ValueError):
    """Bad input to an evaluation: the message names the file / line / field and what to do."""
