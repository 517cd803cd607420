"""The output folder of an eval: which folders may receive one, what makes two evals the same,
and the rank files of a data-parallel eval.

A directory that already holds episodes is only continued with ``resume=True``, and only when
its fingerprint matches (same model, questions, prompt, tools, loop and sampling) and the files
it reads still hold what they held when it started (``natscale.eval.inputs``); batch sizes,
concurrency, the server's timeout and retries, ``limit`` and ``bootstrap`` may change between
runs (``tools.timeout_s`` may not: it changes what the tools observe). Never written: the
working directory or a folder above it, a folder holding or inside an input, a training run
directory, a model or dataset folder, any other non-empty folder, another eval's output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from natscale.agent.response_templates import NAMES as TEMPLATE_NAMES
from natscale.atomic import (
    HF_EXPORT,
    MARKER,
    PREPARED,
    RUN_DIR_ENTRIES,
    atomic_write_json,
    enclosing_output,
    legacy_output,
    natscale_folder,
    protected_reason,
    read_marker,
    shown_names,
    within,
)
from natscale.config.eval import EvalConfig
from natscale.eval.episodes import EPISODES, EpisodeWriter, read_episodes
from natscale.eval.errors import EvalError
from natscale.eval.inputs import changed_inputs, input_identity
from natscale.eval.lock import LOCK, may_lock, output_lock

# fields that may differ between a run and its resumption
_FREE_FIELDS = {
    "output": None,
    "limit": None,
    "bootstrap": None,
    "hf": {"batch_size", "device"},
    "openai": {"concurrency", "timeout_s", "retries"},
}
# fields added after evals were first recorded, with their defaults: left out of the comparison
# while they hold them, so an eval started before they existed still resumes
_ADDED_FIELDS = (("loop", "protocol", "react"), ("prompt", "response_template", None),
                 ("tools", "schemas", None), ("openai", "extra_body", {}),
                 ("openai", "api", "completions"))  # fmt: skip
# what makes a folder a training run directory, an eval's own summary.json aside
_RUN_ONLY = {n for n in RUN_DIR_ENTRIES if n != "summary.json"}


# the config's fields that name files or folders (compared as absolute paths: a relative and an
# absolute spelling of the same file are the same eval)
_PATH_FIELDS = (("model",), ("questions",), ("prompt", "file"), ("prompt", "tokenizer"),
                ("prompt", "response_template"), ("prompt", "chat_template"), ("tools", "corpus"),
                ("tools", "schemas"), ("scripted", "trajectories"))  # fmt: skip
# as evals were compared until December 2026: a bundled response template's name was made a path
# too, and prompt.chat_template was compared as spelled (evals recorded so still resume)
_PREVIOUS_PATH_FIELDS = tuple(f for f in _PATH_FIELDS if f != ("prompt", "chat_template"))


def _absolute(value: Any, base: str | None = None) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if not isinstance(value, str) or not value or value.startswith(("http://", "https://")):
        return value
    return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(value)))


def _compared(
    config: dict[str, Any],
    *,
    absolute: bool = True,
    base: str | None = None,
    previous: bool = False,
) -> dict[str, Any]:
    """The part of a config (``model_dump(mode="json")``) that makes two evals the same, with
    its paths made absolute (``absolute``; relative ones are taken from ``base``, default the
    working directory; a bundled response template's name stays a name unless ``previous``,
    the way evals were compared before)."""
    data = json.loads(json.dumps(config))
    for section, key, default in _ADDED_FIELDS:
        if data.get(section, {}).get(key, default) == default:
            data.get(section, {}).pop(key, None)
    for key, sub in _FREE_FIELDS.items():
        if sub is None:
            data.pop(key, None)
        else:
            for k in sub:
                data.get(key, {}).pop(k, None)
    if absolute:
        for path in _PREVIOUS_PATH_FIELDS if previous else _PATH_FIELDS:
            holder = data
            for k in path[:-1]:
                holder = holder.get(k) if isinstance(holder, dict) else None
            if not isinstance(holder, dict) or path[-1] not in holder:
                continue
            name = path == ("prompt", "response_template") and holder[path[-1]] in TEMPLATE_NAMES
            if name and not previous:
                continue
            holder[path[-1]] = _absolute(holder[path[-1]], base)
    return data


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cfg: EvalConfig) -> str:
    """What makes two evals the same: model, questions, prompt, tools, loop and sampling (paths
    as absolute paths; file contents are not read)."""
    return _digest(_compared(cfg.model_dump(mode="json")))


def _legacy_fingerprints(cfg: EvalConfig) -> tuple[str, str]:
    """The fingerprints evals were recorded with before: paths as spelled (the first release),
    then every path field but ``prompt.chat_template`` made absolute, bundled names included."""
    config = cfg.model_dump(mode="json")
    return _digest(_compared(config, absolute=False)), _digest(_compared(config, previous=True))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields that differ between two compared configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += _differences(old.get(key), new.get(key), name)
        return out
    return [] if old == new else [prefix or "(the whole config)"]


def rank_files(out: Path) -> list[Path]:
    return sorted(out.glob("episodes.rank*.jsonl"))


def read_done(out: Path, *, repair: bool) -> list[dict[str, Any]]:
    """Records of ``episodes.jsonl`` and any rank files, first of each (id, sample) kept."""
    seen: set[tuple[str, int]] = set()
    records = []
    for path in [out / EPISODES, *rank_files(out)]:
        for rec in read_episodes(path, repair=repair):
            key = (str(rec["id"]), int(rec["sample"]))
            if key not in seen:
                seen.add(key)
                records.append(rec)
    return records


def merge_rank_files(out: Path) -> None:
    """Append the rank files' new records to episodes.jsonl, then remove the rank files."""
    main = out / EPISODES
    have = {(str(r["id"]), int(r["sample"])) for r in read_episodes(main, repair=True)}
    writer = EpisodeWriter(main)
    try:
        for path in rank_files(out):
            for rec in read_episodes(path, repair=False):
                key = (str(rec["id"]), int(rec["sample"]))
                if key not in have:
                    have.add(key)
                    writer.write(rec)
    finally:
        writer.close()
    for path in rank_files(out):
        path.unlink()


def _path_inputs(cfg: EvalConfig) -> list[str]:
    """The files and folders the eval reads (the output must neither hold nor be inside one)."""
    paths = [*cfg.questions, *cfg.scripted.trajectories]
    named = (cfg.prompt.file, cfg.prompt.tokenizer, cfg.prompt.chat_template, cfg.tools.corpus)
    paths += [p for p in named if p]
    if cfg.model and not cfg.model.startswith(("http://", "https://")):
        paths.append(cfg.model)
    return paths


def eval_record(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` when it is one an eval wrote (an object with its fingerprint and config):
    what makes a folder an evaluation output of natscale; else None."""
    try:
        data = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) and "config" in data:
        return data
    return None


def _cwd_or_input(resolved: Path, inputs: list[str]) -> str | None:
    """Why ``resolved`` is the working directory, a folder above it or one holding an input."""
    cwd = Path.cwd().resolve()
    if within(cwd, resolved):
        return "it is the current working directory or a folder above it"
    for item in inputs:
        if within(Path(item).expanduser().resolve(), resolved):
            return f"it holds an input of this eval ({item})"
    return None


def _refusal(out: Path, inputs: list[str], *, is_eval: bool) -> str | None:
    """Why the existing folder ``out`` may not receive an eval's files, or None."""
    resolved = out.resolve()
    why = protected_reason(out, inputs)  # the working directory, inputs, run directories
    if why is not None and is_eval and not _RUN_ONLY & {p.name for p in out.iterdir()}:
        why = _cwd_or_input(resolved, inputs)  # its summary.json is the eval's own
    if why is not None:
        return why
    kind = read_marker(out)
    if kind == HF_EXPORT or (out / "config.json").exists():
        return "it is a Hugging Face model folder (holds config.json or an hf-export marker)"
    if kind == PREPARED or legacy_output(out, PREPARED):
        return "it is a prepared dataset (a `natscale prepare` output)"
    if kind is not None:
        return f"it is a natscale output of kind {kind!r} ({MARKER})"
    return None


def _enclosing(out: Path, inputs: list[str]) -> str | None:
    """Why ``out`` (existing or not) may not be inside what encloses it, or None."""
    resolved = out.resolve()
    for item in inputs:
        if within(resolved, Path(item).expanduser().resolve()):
            return f"it is inside an input of this eval ({item})"
    enclosing = enclosing_output(resolved)
    if enclosing is not None:
        return f"it is inside {enclosing[0]}, a natscale output that is replaced as a whole"
    run = next((f for f in resolved.parents if natscale_folder(f) == "training run"), None)
    if run is not None:  # its checkpoints are pruned, --fresh moves it aside
        return f"it is inside {run}, a training run directory"
    return None


def check_output(
    out: Path, cfg: EvalConfig, resume: bool, inputs: list[str] | None = None
) -> list[dict[str, Any]]:
    """Refuse (before any work) an output that is not a new or empty folder or this eval's own
    output: the working directory or above it, a folder holding or inside an input, a training
    run directory, a model or dataset folder, any other non-empty folder, another eval's output.
    ``inputs``: more inputs than the config names (``--data``). Return the done records."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"output {out} exists and is not a directory; choose another output")
    inputs = [*_path_inputs(cfg), *(inputs or [])]
    why = _enclosing(out, inputs)
    if why is None and not out.exists():
        return []
    record = eval_record(out)
    if why is None:
        why = _refusal(out, inputs, is_eval=record is not None)
    if why is not None:
        raise EvalError(
            f"output {out} cannot be the output: {why}; natscale eval writes nothing there. "
            "Choose a new (or empty) folder for the output"
        )
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not names:
        return []
    if record is None:
        if (out / EPISODES).exists() or rank_files(out):
            raise EvalError(
                f"output {out} holds {EPISODES} but no readable run.json: not an eval this "
                "command wrote; choose another output directory"
            )
        raise EvalError(
            f"output {out} is not an evaluation output of natscale (no run.json; it holds "
            f"{shown_names(names)}); natscale eval writes only into a new or empty folder or its own "
            "output: choose another output directory"
        )
    held = [n for n in ("run.json", EPISODES, "summary.json") if n in names]
    held += [p.name for p in rank_files(out)]
    if not resume:
        raise EvalError(
            f"output {out} already holds an evaluation ({', '.join(held)}); pass --resume to "
            "continue it, or choose another output directory"
        )
    recorded = record["fingerprint"]
    if recorded not in (fingerprint(cfg), *_legacy_fingerprints(cfg)):
        then = record.get("config")
        changed = (
            _differences(
                _compared(
                    then, base=record.get("cwd") if isinstance(record.get("cwd"), str) else None
                ),
                _compared(cfg.model_dump(mode="json")),
            )
            if isinstance(then, dict)
            else []
        )
        what = (
            ", ".join(changed) if changed else "model, questions, prompt, tools, loop or sampling"
        )
        raise EvalError(
            f"output {out} holds another eval's episodes (its config differs in: {what}; "
            f"run.json fingerprint {recorded}, this config's {fingerprint(cfg)}); to continue "
            "that eval, resume with the values recorded in its run.json (its episodes are "
            "kept); for this config, choose another output directory"
        )
    changed = changed_inputs(record.get("inputs"), cfg)
    if changed:
        raise EvalError(
            f"output {out} holds the episodes of an eval whose files have changed since: "
            f"{', '.join(changed)} (a model retrained or replaced in place, a regenerated "
            "questions file, an edited prompt, chat template or tokenizer); its episodes come from the old files, so resuming would mix two "
            "evals. Choose another output directory"
        )
    return read_done(out, repair=True)


def checked_output(
    out: Path,
    cfg: EvalConfig,
    resume: bool,
    inputs: list[str],
    *,
    dist: Any,
    held: contextlib.ExitStack,
) -> list[dict[str, Any]]:
    """:func:`check_output` on rank 0 alone (before rank 0 writes anything), under the output's
    lock (:mod:`natscale.eval.lock`, entered into ``held``), its verdict shared with the other
    ranks, which then read the done records rank 0 repaired."""
    rank, world = rank_world(dist)
    if world == 1:
        return _locked_check(out, cfg, resume, inputs, held)
    verdict: list[Any] = [None]
    done: list[dict[str, Any]] = []
    if rank == 0:
        try:
            done = _locked_check(out, cfg, resume, inputs, held)
        except EvalError as exc:
            verdict[0] = str(exc)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise EvalError(verdict[0])
    if rank != 0 and out.is_dir():
        done = read_done(out, repair=False)
    return done


def _locked_check(
    out: Path, cfg: EvalConfig, resume: bool, inputs: list[str], held: contextlib.ExitStack
) -> list[dict[str, Any]]:
    if not may_lock(out):
        return check_output(out, cfg, resume, inputs)  # refused, untouched
    if not out.exists():
        check_output(out, cfg, resume, inputs)  # inside an input, say: refused before mkdir
    held.enter_context(output_lock(out))
    return check_output(out, cfg, resume, inputs)  # again: another run may have written since


def rank_world(dist: Any) -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def init_output(out: Path, cfg: EvalConfig, world: int) -> None:
    """Rank 0: create the directory, record run.json, fold in a killed run's rank files."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "run.json").exists():
        atomic_write_json(
            out / "run.json",
            {
                "fingerprint": fingerprint(cfg),
                "config": cfg.model_dump(mode="json"),
                "inputs": input_identity(cfg),
                "cwd": os.getcwd(),  # what the config's relative paths are relative to
            },
            ensure_ascii=False,
        )
    if world == 1 and rank_files(out):  # left by a killed data-parallel run
        merge_rank_files(out)
