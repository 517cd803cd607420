"""Bad-input errors that name the file, the record and the field, and the skip counters.

Every loader raises :class:`DataError` for a bad record. Under ``on_error: skip`` the caller
catches it and counts it by ``reason`` in a :class:`Issues` (which ends up in ``stats.json``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A bad input record. ``str(err)`` reads ``FILE: RECORD: field 'F': what. hint``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | None = None,
        field: str | None = None,
        reason: str = "invalid_record",
        hint: str = "",
    ) -> None:
        self.message, self.file, self.record, self.field = message, file, record, field
        self.reason, self.hint = reason, hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = [p for p in (self.file, self.record) if p]
        if self.field:
            where.append(f"field {self.field!r}")
        text = ": ".join([*where, self.message])
        return f"{text}. {self.hint}" if self.hint else text

    def at(
        self, *, file: str | None = None, record: str | None = None, field_prefix: str = ""
    ) -> DataError:
        """A copy located at ``file``/``record`` (kept if already set), field under ``field_prefix``."""
        name = self.field
        if field_prefix:
            name = f"{field_prefix}.{name}" if name else field_prefix
        return DataError(
            self.message,
            file=self.file or file,
            record=self.record or record,
            field=name,
            reason=self.reason,
            hint=self.hint,
        )


@dataclass
class Issues:
    """Counts of skipped records per reason, with the first few messages for the log."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    keep_examples: int = 3

    def add(self, err: DataError) -> None:
        self.counts[err.reason] += 1
        kept = self.examples.setdefault(err.reason, [])
        if len(kept) < self.keep_examples:
            kept.append(str(err))

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def handle(err: DataError, on_error: str, issues: Issues | None) -> None:
    """Raise ``err`` under ``on_error='raise'``; count it under ``'skip'``."""
    if on_error == "raise" or issues is None:
        raise err
    issues.add(err)
