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

Which folders may receive an eval, and when one is resumed: ``natscale.eval.output``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from natscale.atomic import atomic_write_json
from natscale.config.eval import EvalConfig
from natscale.eval.compare import format_rate
from natscale.eval.episodes import EPISODES, EpisodeWriter, episode_record
from natscale.eval.errors import EvalError
from natscale.eval.output import (
    checked_output,
    init_output,
    merge_rank_files,
    rank_world,
    read_done,
)


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

        if cfg.openai.api == "chat":  # the server renders the messages: no tokenizer here
            prompter = Prompter(cfg.prompt, None)
        elif not tok_dir:
            raise EvalError(
                "backend 'openai' renders prompts itself: set prompt.tokenizer (or --data), or "
                "openai.api: chat for the server to render them"
            )
        else:
            prompter = Prompter(cfg.prompt, load_eval_tokenizer(tok_dir))
        backend = OpenAIBackend(cfg.model, prompter, cfg.openai, cfg.loop, cfg.sampling)
        return backend, prompter, cfg.openai.concurrency * 2
    from natscale.eval.backends.scripted import ScriptedBackend

    prompter = Prompter(cfg.prompt, load_eval_tokenizer(tok_dir) if tok_dir else None)
    return ScriptedBackend(cfg.scripted.trajectories), prompter, 256


def _output_dir(cfg: EvalConfig, out_dir: str | os.PathLike | None) -> Path:
    target = out_dir or cfg.output
    if not target:
        raise EvalError("no output directory: set `output:` in the config or pass --out")
    return Path(target)


def _load_tools(cfg: EvalConfig):
    """The tool registry; with native tool calls, each tool with its schema."""
    from natscale.agent.tools import (
        ToolConfigError,
        build_tools,
        close_tools,
        load_schemas,
        with_schemas,
    )

    try:
        tools = build_tools(cfg.tools.names, corpus=cfg.tools.corpus, user_tools=cfg.tools.user)
    except ToolConfigError as exc:
        raise EvalError(f"tools: {exc}") from None
    if cfg.loop.protocol == "react":
        return tools
    try:
        schemas = load_schemas(cfg.tools.schemas) if cfg.tools.schemas else None
        return _in_names_order(with_schemas(tools, schemas), cfg.tools.names)
    except ToolConfigError as exc:
        close_tools(tools)
        raise EvalError(f"tools: {exc}") from None


def _in_names_order(tools: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``tools`` in the order the prompt offers them: those ``tools.names`` names in its order
    (``--data``: the order the training data offered them), then the other ``tools.user`` ones,
    ``finish`` last."""
    from natscale.agent.react import FINISH

    rank = {name: k for k, name in enumerate(names)}
    order = sorted(tools, key=lambda n: (n == FINISH, rank.get(n, len(rank))))
    return {name: tools[name] for name in order}


def _step(cfg: EvalConfig, prompter, tools) -> tuple[Callable, str | None]:
    """The rollout's ``step`` (ReAct, or native tool calls read by the model's response parser)
    and the name of that parser's response template."""
    from functools import partial

    from natscale.agent.loop import advance, advance_tool_calls

    if cfg.loop.protocol == "react":
        return advance, None
    from natscale.agent.tool_calls import from_chat_message
    from natscale.eval.tool_parsing import build_parser

    prompter.tools = [t.schema for t in tools.values()]
    setting = cfg.prompt.response_template
    chat = cfg.backend == "openai" and cfg.openai.api == "chat"
    # a chat server parses the calls; a response template given with it reads them from the
    # text of a turn it returned without any (a server with no tool parser)
    parser = build_parser(setting, prompter) if setting or not chat else None

    def parse(ep, gen):
        if gen.message is not None:
            turn = from_chat_message(gen.message)
            if turn.calls or parser is None:
                return turn
        prompt = ""
        if parser.prefixed and prompter.renderer is not None:  # it anchors on the prompt
            prompt = prompter.text(prompter.messages(ep.question.question, ep.history))
        return parser.parse(gen.text, prompt, prompter.tools)

    return partial(advance_tool_calls, parse=parse), parser.name if parser else "server"


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
    step: Callable,
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
            step=step,
        ):
            native = None
            if cfg.loop.protocol == "tool_calls":
                native = (prompter.unmarked(ep.question.question), prompter.tools)
            rec = episode_record(
                ep,
                cfg.task,
                temperature=cfg.sampling.temperature,
                marker=prompter.class_name,
                tool_calls=native,
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
    facts: dict[str, Any],
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
            "protocol": cfg.loop.protocol,
            "world_size": world,
            **facts,
            "sampling": cfg.sampling.model_dump(),
            # the questions these metrics cover (a resume may lower `limit`, leaving episodes of
            # other questions in episodes.jsonl): `eval compare` pairs over these
            "question_ids": sorted(wanted),
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
) -> tuple[list[dict[str, Any]], float, dict[str, str]]:
    """Run this rank's pending episodes: (new records, seconds, what the summary records of
    the prompt: the marker and, with native tool calls, the response template)."""
    rank, world = rank_world(dist)
    from natscale.agent.tools import close_tools

    tools = _load_tools(cfg)
    with contextlib.ExitStack() as stack:
        stack.callback(close_tools, tools)
        backend, prompter, batch_size = build_backend(cfg)
        stack.callback(backend.close)
        step, parser_name = _step(cfg, prompter, tools)
        backend.check([q.id for q in questions])
        if rank == 0:
            init_output(out, cfg, world)
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
            step=step,
            batch_size=batch_size,
            bar=bar,
            rank=rank,
            world=world,
            should_stop=should_stop,
        )
    facts = {"marker": prompter.class_name}
    if parser_name is not None:
        facts["response_template"] = parser_name
    return new_records, elapsed, facts


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
    rank, world = rank_world(dist)
    from natscale.eval.questions import load_questions

    out = _output_dir(cfg, out_dir)
    with contextlib.ExitStack() as held:  # rank 0: the output's lock, until summary.json
        done = checked_output(out, cfg, resume, [str(i) for i in inputs], dist=dist, held=held)
        questions = load_questions(cfg.questions, cfg.limit)
        new_records, elapsed, facts = _roll_out(
            cfg, out, questions, done, dist=dist, progress=progress, should_stop=should_stop
        )
        if world > 1:
            dist.barrier()  # every rank has stopped and closed its file
            if rank != 0:
                return None
            new_records = _merged_new_records(out, done)
        summary = _summary(
            cfg, out, questions, done, new_records, world=world, facts=facts, elapsed=elapsed
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
    eps, tps = format_rate(tp["episodes_per_s"]), format_rate(tp["generated_tokens_per_s"])
    state = "" if summary["complete"] else " (INCOMPLETE: rerun with --resume)"
    if summary.get("truncated_turns"):
        n = summary["truncated_turns"]
        fails += f" ({n} turn{'s' if n != 1 else ''} cut at loop.max_new_tokens)"
    return (
        f"natscale eval: {summary['task']} {'; '.join(parts)} over {summary['episodes']} "
        f"episodes of {summary['questions']} questions; failures: {fails}; "
        f"{eps} episodes/s, {tps} tokens/s; {summary['output']}{state}"
    )
