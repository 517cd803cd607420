"""What a launch check found: an error (the launch is refused), a warning, or a note."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem (or remark) about a launch; ``where`` is ``file:line`` or an option name."""

    level: Level
    message: str
    where: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.level}: {self.where}: {self.message}"
            if self.where
            else f"{self.level}: {self.message}"
        )


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
