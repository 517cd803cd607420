"""The one exception type conversions raise for bad input (a user error, not a bug)."""

from __future__ import annotations


class ConvertError(ValueError):
    """Bad input to a conversion: the message names the file and says what to do.

    Raised before anything is written; the CLI prints it and exits 2 (bad input).
    """
