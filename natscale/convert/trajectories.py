"""Trajectory files from one format to another: the data pipeline's loader, then our writer.

Reading goes through ``natscale.data.formats.load_trajectories`` (the same code ``natscale
prepare`` uses), so whatever converts also prepares; writing through the same format modules'
writers (``natscale.data.formats.FORMATS[name].write``).
For ``--from nat`` the question and prompt files are found next to the input when not given:
``<stem>.questions.jsonl`` / ``questions.jsonl`` and ``<stem>.prompt.json`` / ``prompt.json``
(the names our NAT writer and the release use).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from natscale.atomic import atomic_path
from natscale.convert.errors import ConvertError

if TYPE_CHECKING:
    from natscale.data.errors import Issues
    from natscale.data.trajectory import Trajectory


@dataclass
class DataConvertResult:
    output: Path
    files: list[Path]
    num_records: int
    num_skipped: int
    options: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def nat_side_candidates(path: Path) -> dict[str, list[Path]]:
    """Where the question / prompt files of a NAT trajectory file are looked for, in order."""
    folder = path if path.is_dir() else path.parent
    stem = "" if path.is_dir() else path.stem
    own = [f"{stem}.questions.jsonl", f"{stem}.questions.json", f"{stem}.prompt.json"]
    own = own if stem else ["", "", ""]
    names = {
        "questions": [own[0], own[1], "questions.jsonl", "questions.json"],
        "prompt": [own[2], "prompt.json"],
    }
    return {option: [folder / n for n in found if n] for option, found in names.items()}


def nat_side_files(path: Path) -> dict[str, str]:
    """Question / prompt files next to a NAT trajectory file, if there are any."""
    found: dict[str, str] = {}
    for option, places in nat_side_candidates(path).items():
        hit = next((p for p in places if p.is_file() and p != path), None)
        if hit is not None:
            found[option] = str(hit)
    return found


def _dump(content: Any, path: Path) -> str:
    if isinstance(content, dict):
        return json.dumps(content, ensure_ascii=False, indent=2) + "\n"
    rows = [json.dumps(r, ensure_ascii=False) for r in content]
    if path.suffix == ".jsonl":
        return "".join(row + "\n" for row in rows)
    return "[\n" + ",\n".join(rows) + "\n]\n"


def write_files_atomically(
    files: dict[Path, Any], overwrite: bool, inputs: list[Path] | tuple[Path, ...] = ()
) -> None:
    """Write every file to a temporary name, then rename them all; on failure remove them all.

    An input file is never replaced, ``overwrite`` or not."""
    read = {p.resolve() for p in inputs if p.is_file()}
    for path in files:
        if path.resolve() in read:
            raise ConvertError(
                f"{path} is an input of this conversion and is never replaced; "
                "choose another output"
            )
        if path.exists() and not path.is_file():
            raise ConvertError(f"{path} exists and is not a file; choose another output")
        if path.exists() and not overwrite:
            raise ConvertError(f"{path} already exists; choose another output or pass --overwrite")
    with contextlib.ExitStack() as stack:  # every file renamed at the end, or none
        for path, content in files.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = stack.enter_context(atomic_path(path))
            except OSError as exc:
                raise ConvertError(
                    f"{path}: cannot write there ({exc.strerror or exc}); choose another output"
                ) from None
            tmp.write_text(_dump(content, path), encoding="utf-8")


def _input_files(input_path: Path, options: dict[str, Any]) -> list[Path]:
    """The files a conversion reads: the input (every file of a folder) and path options."""
    found = [input_path]
    if input_path.is_dir():
        found = [p for p in input_path.rglob("*") if p.is_file()]
    for value in options.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and Path(item).is_file():
                found.append(Path(item))
    return found


def _check_request(src: str, dst: str, output: Path) -> None:
    """Both formats known, the output a .json or .jsonl file."""
    from natscale.data.formats import FORMATS

    if src not in FORMATS:
        raise ConvertError(f"--from {src!r}: unknown format; choose one of {sorted(FORMATS)}")
    if dst not in FORMATS:
        raise ConvertError(f"--to {dst!r}: unknown format; choose one of {sorted(FORMATS)}")
    if output.suffix not in (".json", ".jsonl"):
        raise ConvertError(f"{output}: the output must end in .json or .jsonl")


def _load(input_path: Path, src: str, options: dict[str, Any], issues: Issues) -> list[Trajectory]:
    """The trajectories of ``input_path``; a ConvertError that says what to pass when it fails."""
    from natscale.data.errors import DataError
    from natscale.data.formats import load_trajectories

    try:
        return load_trajectories(input_path, format=src, issues=issues, **options)
    except DataError as err:
        if src == "nat" and "questions" not in options and err.field == "question":
            looked = ", ".join(str(p) for p in nat_side_candidates(input_path)["questions"])
            raise ConvertError(
                f"cannot read {input_path} as nat: its records have no 'question' and no "
                f"question file was found (looked for {looked}); pass --option "
                f"questions=FILE ({err})"
            ) from err
        raise ConvertError(f"cannot read {input_path} as {src}: {err}") from err
    except TypeError as err:  # an option the loader does not take
        raise ConvertError(f"--option for {src}: {err}") from err


def convert_trajectories(
    input_path: str | Path,
    output: str | Path,
    *,
    src: str,
    dst: str,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    tool_calls: bool = False,
) -> DataConvertResult:
    """Load ``input_path`` in format ``src`` and write it as ``dst`` to ``output`` (.json/.jsonl).

    ``tool_calls``: ReAct text turns become native tool calls (:mod:`natscale.data.react_calls`)."""
    from natscale.data.errors import Issues
    from natscale.data.formats import FORMATS
    from natscale.data.formats.writing import Notes, WriteError

    if str(output).endswith(("/", os.sep)) or Path(output).is_dir():
        raise ConvertError(f"{output}: names a folder; give the output file (.json or .jsonl)")
    input_path, output = Path(input_path), Path(output)
    _check_request(src, dst, output)
    options = dict(options or {})
    if src == "nat":
        options = {**nat_side_files(input_path), **options}
    issues = Issues()
    trajs = _load(input_path, src, options, issues)
    notes = Notes()
    if tool_calls:
        from natscale.data.react_calls import react_to_tool_calls

        trajs = react_to_tool_calls(trajs, notes)
    try:
        files = FORMATS[dst].write(trajs, output, notes)
    except WriteError as err:
        raise ConvertError(str(err)) from err
    write_files_atomically(files, overwrite, _input_files(input_path, options))
    lines = notes.lines()
    if issues.total():
        lines.append(f"skipped while reading: {issues.as_dict()}")
    return DataConvertResult(
        output=output,
        files=list(files),
        num_records=len(trajs),
        num_skipped=issues.total(),
        options=options,
        notes=lines,
    )
