"""One evaluation: check the inputs, run the episodes, write ``episodes.jsonl`` and ``summary.json``.

Output directory::

    run.json         the resolved config, its fingerprint (what makes two evals "the same") and
                     the digests of the files it reads (natscale.eval.inputs)
    episodes.jsonl   one finished episode per line (natscale.eval.episodes), appended live
    summary.json     metrics with 95% intervals, failure kinds, throughput, backend, versions

Under torchrun / deepspeed (``dist`` given) each rank runs every ``world_size``-th pending
episode and appends to its own ``episodes.rank{R}.jsonl``; at the end (or on SIGTERM) rank 0
merges them into ``episodes.jsonl``, removes them and writes the summary. Rank files left by a
killed run count as done on resume.

A directory that already holds episodes is only continued with ``resume=True``, and only when
its fingerprint matches (same model, questions, prompt, tools, loop and sampling) and the files
it reads still hold what they held when it started; batch sizes,
concurrency, timeouts, ``limit`` and ``bootstrap`` may change between runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from natscale.atomic import (
    HF_EXPORT,
    MARKER,
    PREPARED,
    RUN_DIR_ENTRIES,
    atomic_write_json,
    legacy_output,
    protected_reason,
    read_marker,
    shown_names,
    within,
)
from natscale.config.eval import EvalConfig
from natscale.eval.episodes import EPISODES, EpisodeWriter, episode_record, read_episodes
from natscale.eval.errors import EvalError
from natscale.eval.inputs import changed_inputs, input_identity

# fields that may differ between a run and its resumption
_FREE_FIELDS = {
    "output": None,
    "limit": None,
    "bootstrap": None,
    "hf": {"batch_size", "device"},
    "openai": {"concurrency", "timeout_s", "retries"},
}
# what makes a folder a training run directory, an eval's own summary.json aside
_RUN_ONLY = {n for n in RUN_DIR_ENTRIES if n != "summary.json"}


# the config's fields that name files or folders (compared as absolute paths: a relative and an
# absolute spelling of the same file are the same eval)
_PATH_FIELDS = (("model",), ("questions",), ("prompt", "file"), ("prompt", "tokenizer"),
                ("tools", "corpus"), ("scripted", "trajectories"))  # fmt: skip


def _absolute(value: Any, base: str | None = None) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if not isinstance(value, str) or not value or value.startswith(("http://", "https://")):
        return value
    return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(value)))


def _compared(
    config: dict[str, Any], *, absolute: bool = True, base: str | None = None
) -> dict[str, Any]:
    """The part of a config (``model_dump(mode="json")``) that makes two evals the same, with
    its paths made absolute (``absolute``; relative ones are taken from ``base``, default the
    working directory)."""
    data = json.loads(json.dumps(config))
    for key, sub in _FREE_FIELDS.items():
        if sub is None:
            data.pop(key, None)
        else:
            for k in sub:
                data.get(key, {}).pop(k, None)
    if absolute:
        for path in _PATH_FIELDS:
            holder = data
            for k in path[:-1]:
                holder = holder.get(k) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and path[-1] in holder:
                holder[path[-1]] = _absolute(holder[path[-1]], base)
    return data


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cfg: EvalConfig) -> str:
    """What makes two evals the same: model, questions, prompt, tools, loop and sampling (paths
    as absolute paths; file contents are not read)."""
    return _digest(_compared(cfg.model_dump(mode="json")))


def _legacy_fingerprint(cfg: EvalConfig) -> str:
    """The fingerprint of natscale <= this version's first release: paths as spelled."""
    return _digest(_compared(cfg.model_dump(mode="json"), absolute=False))


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
    paths += [p for p in (cfg.prompt.file, cfg.prompt.tokenizer, cfg.tools.corpus) if p]
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
    for parent in resolved.parents:
        if read_marker(parent) in (HF_EXPORT, PREPARED):
            return f"it is inside {parent}, a natscale output that is replaced as a whole"
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
    names = sorted(p.name for p in out.iterdir())
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
    if recorded not in (fingerprint(cfg), _legacy_fingerprint(cfg)):
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
            "questions file); its episodes come from the old files, so resuming would mix two "
            "evals. Choose another output directory"
        )
    return read_done(out, repair=True)


def _checked_output(
    out: Path, cfg: EvalConfig, resume: bool, inputs: list[str], *, dist: Any
) -> list[dict[str, Any]]:
    """:func:`check_output` on rank 0 alone (before rank 0 writes anything), its verdict shared
    with the other ranks, which then read the done records rank 0 repaired."""
    rank, world = _rank_world(dist)
    if world == 1:
        return check_output(out, cfg, resume, inputs)
    verdict: list[Any] = [None]
    done: list[dict[str, Any]] = []
    if rank == 0:
        try:
            done = check_output(out, cfg, resume, inputs)
        except EvalError as exc:
            verdict[0] = str(exc)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise EvalError(verdict[0])
    if rank != 0 and out.is_dir():
        done = read_done(out, repair=False)
    return done


def versions() -> dict[str, str]:
    import natscale

    out = {"natscale": natscale.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def build_backend(cfg: EvalConfig):
    """(backend, prompter, batch size) for the config; raises EvalError on bad input."""
    from natscale.eval.prompting import Prompter, load_eval_tokenizer

    tok_dir = cfg.prompt.tokenizer
    if cfg.backend == "hf":
        from natscale.eval.backends.hf import HFBackend, check_model_dir

        check_model_dir(cfg.model)
        prompter = Prompter(cfg.prompt, load_eval_tokenizer(tok_dir or cfg.model))
        return (
            HFBackend(cfg.model, prompter, cfg.hf, cfg.loop, cfg.sampling),
            prompter,
            cfg.hf.batch_size,
        )
    if cfg.backend == "openai":
        from natscale.eval.backends.openai import OpenAIBackend

        if not tok_dir:
            raise EvalError(
                "backend 'openai' renders prompts itself: set prompt.tokenizer (or --data)"
            )
        prompter = Prompter(cfg.prompt, load_eval_tokenizer(tok_dir))
        backend = OpenAIBackend(cfg.model, prompter, cfg.openai, cfg.loop, cfg.sampling)
        return backend, prompter, cfg.openai.concurrency * 2
    from natscale.eval.backends.scripted import ScriptedBackend

    prompter = Prompter(cfg.prompt, load_eval_tokenizer(tok_dir) if tok_dir else None)
    return ScriptedBackend(cfg.scripted.trajectories), prompter, 256


def _rank_world(dist: Any) -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def _output_dir(cfg: EvalConfig, out_dir: str | os.PathLike | None) -> Path:
    target = out_dir or cfg.output
    if not target:
        raise EvalError("no output directory: set `output:` in the config or pass --out")
    return Path(target)


def _load_tools(cfg: EvalConfig):
    from natscale.agent.tools import ToolConfigError, build_tools

    try:
        return build_tools(cfg.tools.names, corpus=cfg.tools.corpus, user_tools=cfg.tools.user)
    except ToolConfigError as exc:
        raise EvalError(f"tools: {exc}") from None


def _init_output(out: Path, cfg: EvalConfig, world: int) -> None:
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


def _key(rec: dict[str, Any]) -> tuple[str, int]:
    return (str(rec["id"]), int(rec["sample"]))


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="eval",
        unit="ep",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _generate_fn(cfg: EvalConfig, backend, prompter) -> Callable:
    """The rollout's ``generate``: one backend request per unfinished episode."""
    from natscale.agent.loop import turn_seed
    from natscale.eval.backends import Request

    def generate(episodes):
        return backend.generate(
            [
                Request(
                    ep.question.id,
                    ep.sample,
                    ep.turns,
                    ep.question.question,
                    prompter.messages(ep.question.question, ep.history),
                    turn_seed(cfg.sampling.seed, ep.question.id, ep.sample, ep.turns),
                )
                for ep in episodes
            ]
        )

    return generate


def _run_episodes(
    cfg: EvalConfig,
    out: Path,
    work: list,
    *,
    backend,
    prompter,
    tools,
    batch_size: int,
    bar,
    rank: int,
    world: int,
    should_stop: Callable[[], bool],
) -> tuple[list[dict[str, Any]], float]:
    """Roll out this rank's ``work``, writing each finished episode; (new records, seconds)."""
    from natscale.agent.loop import rollout

    writer = EpisodeWriter(out / (EPISODES if world == 1 else f"episodes.rank{rank}.jsonl"))
    new_records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for ep in rollout(
            work,
            _generate_fn(cfg, backend, prompter),
            tools,
            batch_size=batch_size,
            max_turns=cfg.loop.max_depth + 1,
            timeout_s=cfg.tools.timeout_s,
            should_stop=should_stop,
        ):
            rec = episode_record(
                ep, cfg.task, temperature=cfg.sampling.temperature, marker=prompter.class_name
            )
            writer.write(rec)
            new_records.append(rec)
            if bar is not None:
                bar.update(world)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return new_records, time.perf_counter() - t0


def _throughput(new_records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    gen_tokens = sum(int(r["info"].get("generated_tokens", 0)) for r in new_records)
    return {
        "episodes_this_run": len(new_records),
        "elapsed_s": round(elapsed, 3),
        "episodes_per_s": round(len(new_records) / elapsed, 4) if elapsed > 0 else None,
        "generated_tokens": gen_tokens,
        "generated_tokens_per_s": round(gen_tokens / elapsed, 2) if elapsed > 0 else None,
    }


def _earlier(out: Path) -> dict[str, Any]:
    """The throughput a previous run of this eval measured (a resume that ran no episode
    measures none), marked as such; else that of no episodes."""
    try:
        earlier = json.loads((out / "summary.json").read_text(encoding="utf-8"))["throughput"]
    except (OSError, ValueError, KeyError, TypeError):
        earlier = None
    if not isinstance(earlier, dict) or not earlier.get("episodes_this_run"):
        return _throughput([], 0.0)
    return {**earlier, "measured": "by an earlier run (this one had no episode left to run)"}


def _summary(
    cfg: EvalConfig,
    out: Path,
    questions: list,
    done: list[dict[str, Any]],
    new_records: list[dict[str, Any]],
    *,
    world: int,
    marker: str,
    elapsed: float,
) -> dict[str, Any]:
    """summary.json: the metrics of the questions' episodes and what produced them."""
    from natscale.eval.metrics import summarize

    wanted, n = {q.id for q in questions}, cfg.sampling.n
    records = [r for r in done + new_records if str(r["id"]) in wanted and int(r["sample"]) < n]
    total = len(questions) * n
    summary = summarize(records, cfg.task, bootstrap=cfg.bootstrap, seed=cfg.sampling.seed)
    summary.update(
        {
            "complete": len(records) == total,
            "expected_episodes": total,
            "output": str(out),
            "model": cfg.model,
            "backend": cfg.backend,
            "world_size": world,
            "marker": marker,
            "sampling": cfg.sampling.model_dump(),
            "throughput": _throughput(new_records, elapsed) if new_records else _earlier(out),
            "versions": versions(),
        }
    )
    return summary


def _merged_new_records(out: Path, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 0, once every rank has stopped: merge the rank files; the records not in ``done``."""
    merge_rank_files(out)
    done_keys = {_key(r) for r in done}
    return [r for r in read_done(out, repair=False) if _key(r) not in done_keys]


def _roll_out(
    cfg: EvalConfig,
    out: Path,
    questions: list,
    done: list[dict[str, Any]],
    *,
    dist: Any,
    progress: bool,
    should_stop: Callable[[], bool],
) -> tuple[list[dict[str, Any]], float, str]:
    """Run this rank's pending episodes: (new records, seconds, the prompter's marker)."""
    rank, world = _rank_world(dist)
    from natscale.agent.tools import close_tools

    tools = _load_tools(cfg)
    with contextlib.ExitStack() as stack:
        stack.callback(close_tools, tools)
        backend, prompter, batch_size = build_backend(cfg)
        stack.callback(backend.close)
        backend.check([q.id for q in questions])
        if rank == 0:
            _init_output(out, cfg, world)
        if world > 1:
            dist.barrier()
        done_keys = {_key(r) for r in done}
        n = cfg.sampling.n
        pending = [(q, s) for q in questions for s in range(n) if (q.id, s) not in done_keys]
        total = len(questions) * n
        bar = _progress_bar(total, total - len(pending)) if progress and rank == 0 else None
        new_records, elapsed = _run_episodes(
            cfg,
            out,
            pending[rank::world],
            backend=backend,
            prompter=prompter,
            tools=tools,
            batch_size=batch_size,
            bar=bar,
            rank=rank,
            world=world,
            should_stop=should_stop,
        )
    return new_records, elapsed, prompter.class_name


def run_eval(
    cfg: EvalConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = False,
    dist: Any = None,
    inputs: Sequence[str | os.PathLike] = (),
) -> dict[str, Any] | None:
    """Run (or continue) the evaluation; return the summary (also written to summary.json).

    ``dist``: ``torch.distributed`` when running as one rank of several (initialised by the
    caller); then only rank 0 returns the summary, the other ranks None. ``inputs``: what the
    eval reads besides the files its config names (``--data``), which the output must not hold.
    """
    rank, world = _rank_world(dist)
    from natscale.eval.questions import load_questions

    out = _output_dir(cfg, out_dir)
    done = _checked_output(out, cfg, resume, [str(i) for i in inputs], dist=dist)
    questions = load_questions(cfg.questions, cfg.limit)
    new_records, elapsed, marker = _roll_out(
        cfg, out, questions, done, dist=dist, progress=progress, should_stop=should_stop
    )
    if world > 1:
        dist.barrier()  # every rank has stopped and closed its file
        if rank != 0:
            return None
        new_records = _merged_new_records(out, done)
    summary = _summary(
        cfg, out, questions, done, new_records, world=world, marker=marker, elapsed=elapsed
    )
    atomic_write_json(out / "summary.json", summary, ensure_ascii=False)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    parts = []
    for name, m in summary["metrics"].items():
        ci = m.get("ci95")
        text = f"{name} {100 * m['value']:.1f}%"
        if ci:
            text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        parts.append(text)
    fails = ", ".join(f"{k} {v}" for k, v in summary["failures"].items() if v) or "none"
    tp = summary["throughput"]
    state = "" if summary["complete"] else " (INCOMPLETE: rerun with --resume)"
    return (
        f"natscale eval: {summary['task']} {'; '.join(parts)} over {summary['episodes']} "
        f"episodes of {summary['questions']} questions; failures: {fails}; "
        f"{tp['episodes_per_s']} episodes/s, {tp['generated_tokens_per_s']} tokens/s; "
        f"{summary['output']}{state}"
    )
