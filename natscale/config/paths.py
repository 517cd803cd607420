"""A config field holding a path: an empty or blank one is refused when the config is read.

"" would mean the current directory and " " a folder named by a space; both are typing slips.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give a path")
    return value


PathText = Annotated[str, AfterValidator(_not_blank)]
