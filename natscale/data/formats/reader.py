"""Reading raw records: JSON arrays, JSONL and Parquet; single files or directories.

Records are dicts located by ``file`` and ``where`` ("line 12" for JSONL, "record 3" for the
index in a JSON array or Parquet file) so an error can say exactly which one is bad.

File-level problems (missing or empty file, a JSON array that does not parse or is not UTF-8)
always raise: there is no record to skip. A UTF-8 byte-order mark at the start of a file is
accepted (and ignored). Record-level problems (a bad JSONL line, non-UTF-8 bytes in a
line, a record that is not an object, text with a lone UTF-16 surrogate) follow ``on_error``.

A directory stands for the data files below it, except hidden ones (a name starting with ``.``,
in the path below the directory: editors' and notebooks' copies) and natscale's own output
folders (they carry ``.natscale-output``), so an output written under a source directory is
never read back as input.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natscale.atomic import EVAL_EPISODES, natscale_folder
from natscale.data.errors import DataError, Issues, handle

SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")
# A JSON / JSONL file at least this large is read record by record (bounded memory) instead of
# as a whole; the records and their locations are the same. A `.json` file is always read record
# by record: its first record is then ready at once (prepare renders it while the rest is read),
# not after the whole array is parsed, and one `raw_decode` per record is no slower in all.
STREAM_BYTES = 64 * 2**20
_BLOCK = 2**20  # characters read at a time when streaming a JSON array
# a \\uD800-\\uDFFF escape: one half of a surrogate pair (an emoji, ...); json.loads joins a
# pair into one character but leaves a lone half in the string, which is not text (no tokenizer
# and no UTF-8 writer takes it). Records whose text holds such an escape are checked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Record:
    file: str
    where: str
    data: dict[str, Any]
    # read from Parquet: Arrow stores the objects at one place of every record (a tool call's
    # arguments, ...) as one struct with the members of all of them, so a member that one of
    # them lacks reads back as null (see ``without_arrow_nulls``)
    arrow: bool = False

    def error(self, message: str, *, field: str | None = None, reason: str, hint: str = ""):
        return DataError(
            message, file=self.file, record=self.where, field=field, reason=reason, hint=hint
        )


def without_arrow_nulls(value: Any) -> Any:
    """``value`` without the null members of its objects, at any depth (list items are kept).

    For what a Parquet record holds as free-form objects (tool-call arguments, tool schemas):
    Arrow merged the objects of all records into one struct type, so each has every other's
    members as nulls (``{"expression": "17 * 23", "query": null}``). An explicit null member
    cannot be told from those; in the JSON-string form (``"arguments": "{...}"``) it survives."""
    if isinstance(value, dict):
        return {k: without_arrow_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_arrow_nulls(v) for v in value]
    return value


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files in ``paths``; a directory stands for its data files (recursively, sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    spelled: list[str] = []  # each file as the caller wrote it (Path drops a leading ./)
    for given in paths:
        p = Path(given)
        if p.is_dir():
            skipped: list[str] = []
            found = sorted(_data_files(p, skipped))
            if not found:
                raise DataError(
                    f"directory has no data files ({', '.join(SUFFIXES)})"
                    + (f"; natscale outputs are not read: {', '.join(skipped)}" if skipped else ""),
                    file=str(p),
                    reason="no_files",
                    hint="an eval's episodes are read when named: list OUT/episodes.jsonl or OUT"
                    if any(s.endswith("(eval output)") for s in skipped)
                    else "",
                )
            files.extend(found)
            spelled.extend(f"{f} (in {given})" for f in found)
        elif p.is_file():
            files.append(p)
            spelled.append(str(given))
        else:
            where = "" if p.is_absolute() else f"; relative paths are taken from {Path.cwd()}"
            raise DataError(
                "file not found",
                file=str(p),
                reason="missing_file",
                hint=f"check the path{where}",  # prepare, convert data and eval read files
            )
    seen: dict[Path, int] = {}
    for i, f in enumerate(files):
        first = seen.setdefault(f.resolve(), i)
        if first != i:
            one, two = spelled[first], spelled[i]
            raise DataError(
                f"read twice: {one} and {two} are the same file"
                + (" (listed twice)" if one == two else "")
                + ", so its records would count twice",
                file=str(f),
                reason="duplicate_file",
                hint="list each file once (a directory stands for every data file below it); "
                "weigh classes with strategy.weights or strategy.counts",
            )
    return files


def _data_files(root: Path, skipped: list[str] | None = None) -> Iterator[Path]:
    """The data files below ``root``, skipping hidden names and natscale's outputs (each named in
    ``skipped``; linked folders are followed, each real folder once). ``root`` itself an eval's
    output stands for its ``episodes.jsonl``."""
    if natscale_folder(root) == "eval output":
        if (root / EVAL_EPISODES).is_file():
            yield root / EVAL_EPISODES
        return
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))
        kept = []
        for d in dirs:
            path = Path(folder, d)
            if d.startswith(".") or os.path.realpath(path) in seen:
                continue
            kind = natscale_folder(path)
            if kind is not None:
                if skipped is not None:
                    skipped.append(f"{path} ({kind})")
                continue
            kept.append(d)
        dirs[:] = kept
        for name in names:
            path = Path(folder, name)
            if not name.startswith(".") and path.suffix in SUFFIXES and path.is_file():
                yield path


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
    if path.is_file() and (path.suffix == ".json" or path.stat().st_size >= STREAM_BYTES):
        yield from _iter_streamed(path, on_error, issues, wrap_lists)
        return
    yield from _iter_whole(path, on_error, issues, wrap_lists)


def _iter_whole(
    path: Path, on_error: str, issues: Issues | None, wrap_lists: str | None
) -> Iterator[Record]:
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
                suspect = _SURROGATE_ESCAPE.search(raw) is not None
                yield from _checked(obj, str(path), "record 0", on_error, issues, None, suspect)
                return
        yield from _iter_jsonl(raw, path, on_error, issues, wrap_lists)
        return
    yield from _iter_json_array(raw, path, on_error, issues, wrap_lists)


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _not_utf8(path, exc.start, line, exc.reason) from exc


def _not_utf8(path: Path, offset: int, line: int, why: str) -> DataError:
    return DataError(
        f"bytes at offset {offset} (line {line}) are not UTF-8 ({why})",
        file=str(path),
        reason="non_utf8",
        hint="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
    )


def _iter_jsonl(
    raw: bytes,
    path: Path,
    on_error: str,
    issues: Issues | None,
    wrap: str | None = None,
    first_line: int = 1,
) -> Iterator[Record]:
    """The records of JSONL bytes, each named by its line: ``first_line`` is the number in the
    file of the first line of ``raw`` (a streamed file passes its lines one at a time)."""
    for lineno, line in enumerate(raw.split(b"\n"), start=first_line):
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
        suspect = _SURROGATE_ESCAPE.search(line) is not None
        yield from _checked(obj, str(path), where, on_error, issues, wrap, suspect)


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
    suspect = _SURROGATE_ESCAPE.search(raw) is not None
    for i, obj in enumerate(data):
        yield from _checked(obj, str(path), f"record {i}", on_error, issues, wrap, suspect)


def _iter_parquet(
    path: Path, on_error: str, issues: Issues | None, wrap: str | None = None
) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            yield from _checked(
                obj, str(path), f"record {index}", on_error, issues, wrap, arrow=True
            )
            index += 1


def _checked(
    obj: Any,
    file: str,
    where: str,
    on_error: str,
    issues: Issues | None,
    wrap: str | None,
    suspect: bool = False,
    arrow: bool = False,
):
    """``obj`` as a Record, or the error ``on_error`` says; ``suspect``: its JSON text holds a
    surrogate escape, so its strings are checked for a lone surrogate; ``arrow``: read from
    Parquet (``Record.arrow``)."""
    bad = _lone_surrogate(obj) if suspect else None
    if bad is not None:
        field, char = bad
        handle(
            DataError(
                f"the text holds a lone UTF-16 surrogate (\\u{ord(char):04x}): half of a "
                "character such as an emoji, cut where the text was cut; it is not valid text",
                file=file,
                record=where,
                field=field or None,
                reason="bad_text",
                hint="fix or drop the record where the data was made, or let prepare skip such "
                "records (on_error: skip)",
            ),
            on_error,
            issues,
        )
    elif isinstance(obj, dict):
        yield Record(file, where, obj, arrow)
    elif wrap and isinstance(obj, list) and all(isinstance(t, dict) for t in obj):
        yield Record(file, where, {wrap: obj}, arrow)  # a bare list of turns (ETO)
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


def _lone_surrogate(obj: Any, field: str = "") -> tuple[str, str] | None:
    """The dotted field of the first string in ``obj`` (or key) holding a lone surrogate, and it."""
    if isinstance(obj, str):
        found = _SURROGATE.search(obj)
        return (field, found.group()) if found else None
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            if found := _lone_surrogate(value, f"{field}[{i}]"):
                return found
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{field}.{key}" if field else str(key)
            if found := _lone_surrogate(key, name) or _lone_surrogate(value, name):
                return found
    return None


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
    for key in ("messages", "conversations", "conversation"):
        if key in data:
            return f"the record has {key!r}: {conversation_readers(key, data[key])} reads it"
    if "output" in data:
        return "the record has 'output': format alpaca / fireact reads it"
    return ""


def turn_keys(turns: Any) -> str | None:
    """How a list of turns names its speaker: ``role`` (role/content: OpenAI, NAT, Agent-FLAN)
    or ``from`` (from/value: ShareGPT), by its first object; None when it has neither."""
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    return "role" if "role" in first else "from" if "from" in first else None


def conversation_readers(key: str, turns: Any) -> str:
    """The formats (and option) that read a record whose turns are the list under ``key``."""
    keys = turn_keys(turns)
    openai = "format openai" + ("" if key == "messages" else f" with messages_key: {key}")
    sharegpt = "format sharegpt" + (
        " or agentinstruct" if key == "conversations" else f" with conversations_key: {key}"
    )
    if keys == "role":  # nat reads role/content turns under "conversations" too
        return f"format nat or {openai}" if key == "conversations" else openai
    if keys == "from":
        return sharegpt
    if key == "conversations":
        return f"format sharegpt, agentinstruct or nat (or openai with messages_key: {key})"
    return f"{openai} (role/content turns) or {sharegpt} (from/value turns)"


def _iter_streamed(
    path: Path, on_error: str, issues: Issues | None, wrap: str | None
) -> Iterator[Record]:
    """:func:`iter_records` for a large file, holding one record (or block) at a time."""
    first, first_line = _head(path)
    if not first:
        raise DataError(
            "file is empty" if path.stat().st_size == 0 else "file holds only whitespace",
            file=str(path),
            reason="empty_file",
            hint="check that the file was written completely, or remove it from the config",
        )
    if first == b"[" and path.suffix not in (".jsonl", ".ndjson"):
        yield from _iter_json_array_streamed(path, on_error, issues, wrap)
        return
    if first == b"{" and path.suffix == ".json":
        try:
            json.loads(first_line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            # not JSONL under a .json name: one (pretty-printed) object, read as a whole
            yield from _iter_whole(path, on_error, issues, wrap)
            return
    yield from _iter_jsonl_lines(path, on_error, issues, wrap)


def _head(path: Path) -> tuple[bytes, bytes]:
    """The first non-whitespace byte of a file (after a BOM; b"" if none) and, when it is ``{``,
    the rest of its line (a JSONL record, or the start of one big object)."""
    with open(path, "rb") as f:
        start = f.read(len(codecs.BOM_UTF8))
        if start != codecs.BOM_UTF8:
            f.seek(0)
        for block in iter(lambda: f.read(_BLOCK), b""):
            stripped = block.lstrip()
            if stripped:
                first = stripped[:1]
                if first != b"{":
                    return first, b""
                f.seek(f.tell() - len(stripped))
                return first, f.readline()
    return b"", b""


def _iter_jsonl_lines(
    path: Path, on_error: str, issues: Issues | None, wrap: str | None
) -> Iterator[Record]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            # one line at a time through the same checks as a whole file
            yield from _iter_jsonl(line.rstrip(b"\n"), path, on_error, issues, wrap, lineno)


def _iter_json_array_streamed(
    path: Path, on_error: str, issues: Issues | None, wrap: str | None
) -> Iterator[Record]:
    """The records of a JSON array, decoded one at a time from a sliding text buffer."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig", newline="") as f:
        buf, pos, eof, base = "", 0, False, 0  # base: characters of the file before buf[0]

        def fill() -> bool:
            nonlocal buf, pos, eof, base
            if eof:
                return False
            if pos:
                base += pos
                buf, pos = buf[pos:], 0
            try:
                more = f.read(_BLOCK)
            except UnicodeDecodeError as exc:
                raise _utf8_error(path) from exc
            eof = not more
            buf += more
            return not eof

        def malformed(message: str, at: int) -> DataError:
            line, col = _line_col(path, base + at)
            return DataError(
                f"malformed JSON at line {line} column {col}: {message}",
                file=str(path),
                reason="malformed_json",
                hint="a .json file must hold one JSON array of records (use .jsonl for one per "
                "line)",
            )

        def next_char() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        if next_char() != "[":
            raise malformed("expected '['", pos)
        pos += 1
        index = 0
        while True:
            c = next_char()
            if c == "]" and index == 0:
                pos += 1
                break
            if index:
                if c == "]":
                    pos += 1
                    break
                if c != ",":
                    raise malformed("expected ',' or ']' between records", pos)
                pos += 1
                next_char()
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    at = base + exc.pos  # in the file: fill() moves the buffer's start
                    if fill():
                        continue
                    raise malformed(exc.msg, at - base) from exc
                if end == len(buf) and fill():  # a number may go on in the next block
                    continue
                break
            suspect = _SURROGATE_ESCAPE_TEXT.search(buf, pos, end) is not None
            pos = end
            yield from _checked(obj, str(path), f"record {index}", on_error, issues, wrap, suspect)
            index += 1
        if next_char():
            raise malformed("extra data after the array", pos)


def _utf8_error(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the first bad byte's offset and line as
    :func:`_decode` does (found by decoding the file again, block by block)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done, line = 0, 1
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            pending = decoder.getstate()[0]  # a character cut by the last block's end
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:  # exc.object is pending + block
                line += exc.object[: exc.start].count(b"\n")
                return _not_utf8(path, done - len(pending) + exc.start, line, exc.reason)
            done += len(block)
            line += block.count(b"\n")
    return DataError("the file is not UTF-8", file=str(path), reason="non_utf8")


def _line_col(path: Path, offset: int) -> tuple[int, int]:
    """Line and column (from 1) of character ``offset`` of a UTF-8 file (for an error)."""
    line, col = 1, 1
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
        while offset > 0:
            block = f.read(min(offset, _BLOCK))
            if not block:
                break
            offset -= len(block)
            newlines = block.count("\n")
            if newlines:
                line += newlines
                col = len(block) - block.rfind("\n")
            else:
                col += len(block)
    return line, col
