"""Reading raw records: JSON arrays, JSONL and Parquet; single files or directories.

Records are dicts located by ``file`` and ``where`` ("line 12" for JSONL, "record 3" for the
index in a JSON array or Parquet file) so an error can say exactly which one is bad.

File-level problems (missing or empty file, a JSON array that does not parse or is not UTF-8)
always raise: there is no record to skip. A UTF-8 byte-order mark at the start of a file is
accepted (and ignored). Record-level problems (a bad JSONL line, non-UTF-8 bytes in a
line, a record that is not an object) follow ``on_error``.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natscale.data.errors import DataError, Issues, handle

SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")


@dataclass(frozen=True)
class Record:
    file: str
    where: str
    data: dict[str, Any]

    def error(self, message: str, *, field: str | None = None, reason: str, hint: str = ""):
        return DataError(
            message, file=self.file, record=self.where, field=field, reason=reason, hint=hint
        )


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files in ``paths``; a directory stands for its data files (recursively, sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise DataError(
                    f"directory has no data files ({', '.join(SUFFIXES)})",
                    file=str(p),
                    reason="no_files",
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("file not found", file=str(p), reason="missing_file")
    return files


def iter_records(
    path: str | os.PathLike,
    *,
    on_error: str = "raise",
    issues: Issues | None = None,
    wrap_lists: str | None = None,
) -> Iterator[Record]:
    """Yield the object records of one file (format from the suffix and the first byte).

    ``wrap_lists``: a record that is a list of objects (a bare list of turns) is yielded as
    ``{wrap_lists: list}``; without it such a record is an error."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet(path, on_error, issues, wrap_lists)
        return
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):  # editors on Windows write one; it is not content
        raw = raw[len(codecs.BOM_UTF8) :]
    if not raw.strip():
        raise DataError(
            "file is empty" if not raw else "file holds only whitespace",
            file=str(path),
            reason="empty_file",
            hint="check that the file was written completely, or remove it from the config",
        )
    head = raw.lstrip()[:1]
    if path.suffix in (".jsonl", ".ndjson") or head not in (b"[", b""):
        if path.suffix == ".json" and head == b"{":
            # a .json file holding one object, or JSONL under a .json name
            try:
                obj = json.loads(_decode(raw, path))
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                yield Record(str(path), "record 0", obj)
                return
        yield from _iter_jsonl(raw, path, on_error, issues, wrap_lists)
        return
    yield from _iter_json_array(raw, path, on_error, issues, wrap_lists)


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"bytes at offset {exc.start} (line {line}) are not UTF-8 ({exc.reason})",
            file=str(path),
            reason="non_utf8",
            hint="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from exc


def _iter_jsonl(
    raw: bytes, path: Path, on_error: str, issues: Issues | None, wrap: str | None = None
) -> Iterator[Record]:
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            handle(
                DataError(
                    f"bytes at column {exc.start + 1} are not UTF-8 ({exc.reason})",
                    file=str(path),
                    record=where,
                    reason="non_utf8",
                    hint="re-encode the file as UTF-8",
                ),
                on_error,
                issues,
            )
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            handle(
                DataError(
                    f"malformed JSON at column {exc.colno}: {exc.msg}",
                    file=str(path),
                    record=where,
                    reason="malformed_json",
                    hint="each line must be one complete JSON object",
                ),
                on_error,
                issues,
            )
            continue
        yield from _checked(obj, str(path), where, on_error, issues, wrap)


def _iter_json_array(
    raw: bytes, path: Path, on_error: str, issues: Issues | None, wrap: str | None = None
) -> Iterator[Record]:
    text = _decode(raw, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            file=str(path),
            reason="malformed_json",
            hint="a .json file must hold one JSON array of records (use .jsonl for one per line)",
        ) from exc
    for i, obj in enumerate(data):
        yield from _checked(obj, str(path), f"record {i}", on_error, issues, wrap)


def _iter_parquet(
    path: Path, on_error: str, issues: Issues | None, wrap: str | None = None
) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            yield from _checked(obj, str(path), f"record {index}", on_error, issues, wrap)
            index += 1


def _checked(
    obj: Any, file: str, where: str, on_error: str, issues: Issues | None, wrap: str | None
):
    if isinstance(obj, dict):
        yield Record(file, where, obj)
    elif wrap and isinstance(obj, list) and all(isinstance(t, dict) for t in obj):
        yield Record(file, where, {wrap: obj})  # a bare list of turns (ETO): the conversation
    else:
        handle(
            DataError(
                f"expected a JSON object, got {type(obj).__name__}",
                file=file,
                record=where,
                reason="not_an_object",
                hint=layout_hint(obj),
            ),
            on_error,
            issues,
        )


def layout_hint(data: Any) -> str:
    """Which format or option reads a record laid out like ``data`` (for layout errors)."""
    if isinstance(data, list):
        first = data[0] if data and isinstance(data[0], dict) else {}
        if "from" in first or "role" in first:
            return (
                "the record is a bare list of turns (ETO style): format sharegpt (from/value) "
                "or openai (role/content) reads such records as the conversation"
            )
        return "each record must be a JSON object holding one trajectory"
    if not isinstance(data, dict):
        return "each record must be a JSON object holding one trajectory"
    if {"prompt", "chosen", "rejected"} <= set(data):
        return (
            "a preference pair (DPO data, e.g. ETO's): not a trajectory; write its chosen and "
            "rejected conversations as separate sharegpt records (e.g. two sources with "
            "success: true / success: false)"
        )
    for key, fits in (
        ("messages", "format openai (or conversations_key: messages)"),
        ("conversations", "format sharegpt, agentinstruct or nat (or conversations_key)"),
        ("conversation", "format sharegpt with conversations_key: conversation"),
        ("output", "format alpaca / fireact"),
    ):
        if key in data:
            return f"the record has {key!r}: {fits} reads it"
    return ""
