"""Files and folders that appear complete or not at all; an output folder is replaced only if we
made it.

Files (:func:`atomic_path`, :func:`atomic_write_text`, :func:`atomic_write_bytes`,
:func:`atomic_write_json`) are written to a temporary name in the same directory and renamed over
the target; they get the permissions a plain ``open()`` would give (0666 & ~umask). A finished
folder replaces another with :func:`replace_dir`.

Output directories (:func:`atomic_output_dir`):

Files go to a hidden sibling ``.<name>.partial-<host>-<pid>`` (same filesystem, so the final
``rename`` is atomic); on any exception, KeyboardInterrupt included, the partial folder is
removed. A link to a folder stays a link: the folder it names is replaced (its partial folder
is beside that one). An existing empty folder (or a link to one, or a mount point) is filled, not
replaced: the files go to a hidden ``.natscale-partial-<host>-<pid>`` inside it (same filesystem
whatever the folder is), and when complete each entry is renamed into the folder, the marker
last; the folder itself (its link, mount, owner and permissions) stays. Ctrl-C and SIGTERM wait while the
entries move (renames only); an error puts back those already moved, so the folder is left
empty, never half-filled. A process killed with SIGKILL cannot clean up (killed during those
renames, it leaves part of the entries, unmarked): its partial folder is removed by the next run
on the same host that writes to the same place, once its pid is gone (a folder of another host,
on a shared filesystem, is left alone: its process cannot be seen from here).

Every folder written here carries a marker file, ``.natscale-output``, holding
``{"kind": KIND, "version": 2, "entries": [...]}`` (``prepared`` for ``natscale prepare``,
``hf-export`` for an HF folder, ``model-config`` for a run's ``model_config/``; ``entries``: the
names natscale wrote in it). ``overwrite`` replaces an existing folder only when it carries the
marker of the same kind and holds nothing else than what natscale wrote there: a file or folder
a user added since (notes, an evaluation, a merged dataset) is never deleted; the command refuses
and names it. (A version-1 marker has no list: the kind's known layout stands in for it.) Never
replaced, whatever the flags: the working directory or a folder above it, a folder holding (or
equal to) one of the command's inputs, and a run directory (``checkpoints/``, ``metrics.jsonl``
or ``summary.json`` inside). No output is written inside a prepared dataset or an HF export
(:func:`enclosing_output`). An existing empty folder may always be filled. A prepare output from
before the marker existed is recognised by its exact layout.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from natscale.filemode import apply_umask

MARKER = ".natscale-output"
MARKER_VERSION = 2
RUN_DIR_ENTRIES = ("checkpoints", "metrics.jsonl", "summary.json")
PREPARED, HF_EXPORT = "prepared", "hf-export"  # the kinds of output natscale writes
RUN_MODEL_CONFIG = "model-config"  # RUN_DIR/model_config: written by `natscale train` at start
KIND_NAMES = {
    PREPARED: "a `natscale prepare` output",
    HF_EXPORT: "a Hugging Face export",
    RUN_MODEL_CONFIG: "a training run's model config",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` (with the
    permissions ``open()`` would give it), on any exception it is removed. The parent must exist.
    """
    path = Path(path)
    name = None
    try:  # a signal that lands just after the file is made still removes it
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        apply_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        if name is not None:
            Path(name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """Write ``data`` as indented JSON plus a newline (``dumps``: more ``json.dumps`` options,
    e.g. ``ensure_ascii=False``) through a temporary file; returns ``path``."""
    dumps.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **dumps) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``final``; an existing ``final`` is moved aside first
    and deleted after, so readers see the old folder or the new one, never a mix. Stopped between
    the two renames (Ctrl-C, SIGTERM, an error), the old folder is put back under its name."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.parent / f".{final.name}.old-{_host()}-{os.getpid()}"  # see remove_stale_partials
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    """This host's name as it goes into a partial folder's name (no ``-`` or path separator)."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def partial_dir(out_dir: Path) -> Path:
    """The hidden folder beside ``out_dir`` that this process writes it in."""
    return out_dir.parent / f".{out_dir.name}.partial-{_host()}-{os.getpid()}"


FILL_PREFIX = ".natscale-partial-"  # inside an existing empty output folder: see fill_partial_dir


def fill_partial_dir(out_dir: Path) -> Path:
    """The hidden folder inside an existing empty ``out_dir`` that this process fills it from."""
    return out_dir / f"{FILL_PREFIX}{_host()}-{os.getpid()}"


def _left_by_dead_process(suffix: str) -> bool:
    """Whether a partial folder's ``HOST-PID`` suffix names a process of this host that is gone
    (no host: a natscale version that did not name it)."""
    host, _, pid = suffix.rpartition("-")
    return host in ("", _host()) and pid.isdigit() and not _pid_alive(int(pid))


def _partial_of_fill(path: Path) -> bool:
    """Whether ``path``, inside an output folder, is the partial folder of a fill by this
    process or by a killed one of this host (nothing of what a user put there)."""
    if not path.name.startswith(FILL_PREFIX):
        return False
    return path.name == fill_partial_dir(path.parent).name or _left_by_dead_process(
        path.name[len(FILL_PREFIX) :]
    )


def remove_stale_partials(out_dir: Path) -> None:
    """Delete partial folders for ``out_dir`` left by killed runs on this host (and by runs of
    natscale versions that did not name the host), beside it or, for a fill, inside it, and the
    old outputs a :func:`replace_dir` stopped while deleting them left (``.NAME.old-HOST-PID``:
    the new output was in place)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    prefixes = (f".{out_dir.name}.partial-", f".{out_dir.name}.old-")
    for p in parent.iterdir():
        prefix = next((x for x in prefixes if p.name.startswith(x)), None)
        if prefix is not None and _left_by_dead_process(p.name[len(prefix) :]):
            shutil.rmtree(p, ignore_errors=True)
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.name.startswith(FILL_PREFIX) and _left_by_dead_process(p.name[len(FILL_PREFIX) :]):
                shutil.rmtree(p, ignore_errors=True)


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as a natscale output of ``kind`` (what ``overwrite`` may replace), listing
    what it holds now as what natscale wrote. Call it when the folder is complete."""
    folder = Path(folder)
    entries = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    text = json.dumps({"kind": kind, "version": MARKER_VERSION, "entries": entries}) + "\n"
    (folder / MARKER).write_text(text, encoding="utf-8")


def _marker(folder: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_marker(folder: str | os.PathLike) -> str | None:
    """The kind ``folder`` was marked with, or None (no marker, or one we cannot read)."""
    kind = _marker(folder).get("kind")
    return kind if isinstance(kind, str) else None


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """The names in a marked ``folder`` that natscale did not write there (sorted)."""
    folder = Path(folder)
    data = _marker(folder)
    listed = data.get("entries")
    names = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    if isinstance(listed, list):
        return [n for n in names if n not in listed]
    patterns = V1_ENTRIES.get(str(data.get("kind")))
    if patterns is None:
        return []
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def shown_names(names: list[str]) -> str:
    """The first five of ``names``, and how many more (for an error message)."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# outputs written before the marker existed: replaced only when they hold the whole layout and
# nothing else (a prepare output: what `natscale prepare` writes; a name may be a glob)
LEGACY_LAYOUTS = {
    PREPARED: (
        ("dataset_info.json", "state.json", "stats.json", "prepare_config.yaml"),
        ("data-*.arrow", "tokenizer"),
    ),
}


# an HF folder's config and tokenizer files (no weights): what a run's model_config/ held before
# it was marked, and part of an HF export's layout
HF_CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer*",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.*", "*.model",
                   "vocab.*", "merges.txt")  # fmt: skip

# what a version-1 marker's folder may hold (it has no list of entries): the kind's layout
V1_ENTRIES = {
    PREPARED: (*LEGACY_LAYOUTS[PREPARED][0], *LEGACY_LAYOUTS[PREPARED][1]),
    HF_EXPORT: (*HF_CONFIG_FILES, "*.safetensors", "model.safetensors.index.json",
                "pytorch_model*.bin*", "verify.json"),
}  # fmt: skip


def legacy_output(out_dir: Path, kind: str) -> bool:
    """Whether ``out_dir`` is an unmarked output of ``kind`` from before the marker existed."""
    if kind not in LEGACY_LAYOUTS:
        return False
    required, optional = LEGACY_LAYOUTS[kind]
    names = [p.name for p in out_dir.iterdir()]
    allowed = (*required, *optional)
    return set(required) <= set(names) and all(
        any(fnmatch.fnmatchcase(n, pattern) for pattern in allowed) for n in names
    )


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (as given: resolve both first for real paths)."""
    return path == folder or folder in path.parents


# what makes a folder one natscale wrote without a marker of its own: a training run directory
# (its metrics, or its model_config/, which carries one) and an eval's output (run.json beside
# its episodes or summary)
_RUN_ENTRIES = ("metrics.jsonl", f"model_config/{MARKER}")
EVAL_EPISODES = "episodes.jsonl"  # an eval's episodes (natscale.eval.episodes.EPISODES)
_EVAL_RECORD, _EVAL_OUTPUTS = "run.json", (EVAL_EPISODES, "summary.json")


def natscale_folder(folder: Path) -> str | None:
    """What natscale output ``folder`` is (``output``, ``training run``, ``eval output``), or None:
    a source directory reads none of them (nothing in them is trajectories, and an eval's episodes
    would otherwise come back as training data unasked)."""
    if (folder / MARKER).exists():
        return "output"
    if any((folder / name).exists() for name in _RUN_ENTRIES):
        return "training run"
    if (folder / _EVAL_RECORD).is_file() and any((folder / n).exists() for n in _EVAL_OUTPUTS):
        return "eval output"
    return None


def enclosing_output(path: Path, *, include_self: bool = False) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` (resolved; ``path`` itself too with ``include_self``)
    marked as a prepared dataset or an HF export, with its kind: natscale writes no output inside
    one (it would then hold what natscale did not write there). None if there is none."""
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents) if include_self else resolved.parents:
        kind = read_marker(folder) if folder.is_dir() else None
        if kind in (PREPARED, HF_EXPORT):
            return folder, kind
    return None


def protected_reason(out_dir: Path, inputs: Iterable[str | os.PathLike] = ()) -> str | None:
    """Why ``out_dir`` (an existing folder) must never be replaced, or None."""
    out = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if within(cwd, out):
        return (
            "it is the current working directory"
            if out == cwd
            else f"it holds {cwd}, the current working directory"
        )
    for item in inputs:
        path = Path(item).resolve()
        if within(path, out):
            return f"it holds an input of this command ({item})"
    held = [name for name in RUN_DIR_ENTRIES if (out / name).exists()]
    if held:
        return f"it is a training run directory (holds {', '.join(held)})"
    return None


def is_empty_dir(folder: Path) -> bool:
    """Whether ``folder`` (an existing folder) holds nothing, or only the partial folder of a fill
    by this process or by a killed one of this host (:func:`atomic_output_dir`)."""
    return all(_partial_of_fill(p) for p in folder.iterdir())


def _describe(out_dir: Path) -> str:
    names = sorted(p.name for p in out_dir.iterdir())
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown_names(names)}"


def check_destination(
    out_dir: Path,
    overwrite: bool,
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike] = (),
    error: type[Exception] = FileExistsError,
    hint: str = "choose another output or pass --overwrite",
) -> None:
    """Fail early (before any work) if ``out_dir`` exists and may not be replaced.

    ``kind`` is what the caller writes (see the module doc); ``inputs`` are the files and folders
    the command reads, which ``out_dir`` must not hold. ``error`` is the exception type raised
    (callers use their own error class); ``hint`` says what to do when ``overwrite`` is off.
    """
    out_dir = Path(out_dir)
    enclosing = enclosing_output(out_dir)
    if enclosing is not None:
        parent, found = enclosing
        raise error(
            f"{out_dir} is inside {parent}, {KIND_NAMES[found]}: natscale writes no output "
            "into another one (it would no longer be what natscale wrote there); choose an "
            "output outside it"
        )
    if not out_dir.exists():
        above = next((p for p in out_dir.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise error(f"{out_dir}: {above} is a file, not a folder; choose another output")
        return
    if not out_dir.is_dir():
        raise error(f"{out_dir} exists and is not a directory; choose another output")
    why = protected_reason(out_dir, inputs)
    if why is not None:
        raise error(
            f"{out_dir} cannot be the output: {why}, and natscale never replaces it; "
            "choose a new folder for the output"
        )
    if is_empty_dir(out_dir):
        return
    if not overwrite:
        raise error(f"{out_dir} already exists; {hint}")
    found = read_marker(out_dir)
    if found == kind:
        added = foreign_entries(out_dir)
        if added:
            raise error(
                f"{out_dir} holds what natscale did not write there ({shown_names(added)}), and "
                "--overwrite deletes only what natscale made; move that out of the folder "
                "first, or choose another output"
            )
        return
    if found is None and legacy_output(out_dir, kind):
        return
    what = KIND_NAMES.get(kind, kind)
    if found is None:
        raise error(
            f"{out_dir} is not {what} made by natscale (no {MARKER} marker; it holds "
            f"{_describe(out_dir)}), so --overwrite will not delete it; choose another output, "
            "or move or delete that folder yourself"
        )
    raise error(
        f"{out_dir} is {KIND_NAMES.get(found, repr(found))} made by natscale, not {what}, so "
        "--overwrite will not replace it; choose another output"
    )


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    error: type[Exception] = FileExistsError,
    hint: str = "choose another output or pass --overwrite",
) -> Iterator[Path]:
    """Yield a temporary folder; on success it gets the ``kind`` marker and becomes ``out_dir``
    (replacing it only if :func:`check_destination` allows; an existing empty ``out_dir`` is
    filled instead: see the module doc)."""
    out_dir = Path(out_dir)
    inputs = list(inputs)
    check_destination(out_dir, overwrite, kind=kind, inputs=inputs, error=error, hint=hint)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    if out_dir.is_dir() and is_empty_dir(out_dir):
        with _filled_dir(out_dir, kind=kind, inputs=inputs, error=error) as tmp:
            yield tmp
        return
    # a link to an earlier output (e.g. on a bigger disk) stays a link: its folder is replaced
    final = out_dir.resolve() if out_dir.is_symlink() and out_dir.is_dir() else out_dir
    if final != out_dir:
        remove_stale_partials(final)
    tmp = partial_dir(final)

    def finish() -> None:
        # the folder may have appeared or changed while we worked: check again before replacing
        check_destination(out_dir, overwrite, kind=kind, inputs=inputs, error=error, hint=hint)
        replace_dir(tmp, final)

    with _partial(tmp, kind, finish):
        yield tmp


@contextlib.contextmanager
def _partial(tmp: Path, kind: str, finish: Callable[[], None]) -> Iterator[Path]:
    """Yield the new folder ``tmp``; on success mark it ``kind`` and ``finish()`` (which puts
    it in place); on any exception, KeyboardInterrupt included, remove it."""
    try:  # a signal that lands just after the folder is made (inside mkdir) still removes it
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        write_marker(tmp, kind)
        finish()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _filled_dir(
    out_dir: Path, *, kind: str, inputs: list[str | os.PathLike], error: type[Exception]
) -> Iterator[Path]:
    """Yield a partial folder inside the existing empty ``out_dir``; on success it gets the
    ``kind`` marker and its entries move into ``out_dir`` (see the module doc)."""
    tmp = fill_partial_dir(out_dir)

    def finish() -> None:
        # the folder may have changed while we worked: it must still be empty and allowed
        if not is_empty_dir(out_dir):
            raise error(_changed(out_dir))
        check_destination(out_dir, False, kind=kind, inputs=inputs, error=error)
        _move_entries(tmp, out_dir, error)
        tmp.rmdir()

    with _partial(tmp, kind, finish):
        yield tmp


def _changed(out_dir: Path) -> str:
    added = [p.name for p in out_dir.iterdir() if not _partial_of_fill(p)]
    return (
        f"{out_dir} was empty when this command started and now holds {shown_names(sorted(added))}"
        "; nothing was written into it (natscale fills only an empty folder); choose another "
        "output, or empty that folder and run the command again"
    )


def _move_entries(tmp: Path, out_dir: Path, error: type[Exception]) -> None:
    """Rename every entry of ``tmp`` into ``out_dir`` (the marker last), all or none: on an error
    the ones moved go back to ``tmp``. Ctrl-C and SIGTERM wait until this ends (renames only)."""
    names = [*sorted(p.name for p in tmp.iterdir() if p.name != MARKER), MARKER]
    moved: list[str] = []
    with _signals_held():
        try:
            for name in names:
                if os.path.lexists(out_dir / name):  # never rename over what appeared there
                    raise error(_changed(out_dir))
                os.rename(tmp / name, out_dir / name)
                moved.append(name)
        except BaseException:
            for name in reversed(moved):
                with contextlib.suppress(OSError):
                    os.rename(out_dir / name, tmp / name)
            raise


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving inside the block reach their handlers when it ends (in the
    main thread only, where Python runs handlers; one set outside Python or ignored is kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    previous = {n: h for n, h in previous.items() if h not in (None, signal.SIG_IGN)}
    for n in previous:
        signal.signal(n, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)
        for n in dict.fromkeys(held):
            signal.raise_signal(n)
