"""``natscale prepare`` as a library: trajectories -> NAT-marked, masked, packed rows on disk.

    from natscale.config.prepare import PrepareConfig
    from natscale.config.loader import load_config
    result = prepare(load_config("examples/configs/prepare_math.yaml", PrepareConfig))
    result.out_dir, result.stats["packing"]["efficiency"]

Stages: load every source (formats/) -> handle unfinished -> label outcomes (outcome.py) ->
strategy: class, marker, seeded per-class sampling, weights (nat.py) -> render through the chat
template with the train mask, then trim the untrained tail, truncate or drop over-long examples
(render/batch.py's ``RenderStream``, fit.py: chunk by chunk in ``num_proc`` processes while the
next trajectories are read) -> pack (packing.py) -> write atomically (prepared.py).
The input is streamed: trajectories are read, labelled and marked one at a time, and packing
runs per window of ``pack.window_examples`` examples (windows.py), each window written as
one Arrow shard (shards.py) before the next is read, so memory holds one window.
Bad records raise :class:`DataError` (``on_error: raise``) or are counted in
``stats["skipped"]`` (``on_error: skip``).
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from natscale.atomic import check_destination
from natscale.config.loader import save_config
from natscale.config.prepare import PrepareConfig
from natscale.data import fit, nat, outcome, windows
from natscale.data.checks import data_warnings
from natscale.data.errors import DataError, Issues, handle
from natscale.data.formats import iter_trajectories, load_trajectories
from natscale.data.formats.nat_release import NatSource
from natscale.data.packing import build_rows, efficiency, plan_bins
from natscale.data.packing_search import l2_bound
from natscale.data.prompts import TaskPrompt, load_task_prompt
from natscale.data.render.readback import unreadable_calls
from natscale.data.shards import ShardWriter
from natscale.data.trajectory import Trajectory

STATS_VERSION = 1


@dataclass
class PrepareResult:
    out_dir: Path
    stats: dict[str, Any]


def _where(traj: Trajectory) -> dict[str, str | None]:
    return {"file": traj.meta.get("file"), "record": traj.meta.get("record")}


def source_options(config: PrepareConfig) -> tuple[list[tuple[Any, dict]], dict[str, TaskPrompt]]:
    """Each source with its loader options, and the task prompts by task name."""
    prompts: dict[str, TaskPrompt] = {}
    out = []
    for src in config.sources:
        # exclude_unset, not exclude_none: an explicit null (success_field: null) must reach it
        opts = src.model_dump(exclude={"format", "paths", "success"}, exclude_unset=True)
        if isinstance(src, NatSource) and src.prompt is not None:
            prompt = load_task_prompt(src.prompt, src.prompt_variant, strategy=config.strategy.name)
            task = src.task or prompt.task
            if task in prompts and prompts[task] != prompt:
                raise DataError(
                    f"two sources give task {task!r} different prompt files",
                    file=src.prompt,
                    reason="conflicting_prompts",
                    hint="give each source its own task name",
                )
            prompts[task] = prompt
            opts.update(prompt=prompt, task=task)
            opts.pop("prompt_variant", None)
        out.append((src, opts))
    return out, prompts


def iter_sources(
    config: PrepareConfig, issues: Issues, sources: list[tuple[Any, dict]]
) -> Iterator[Trajectory]:
    """Every trajectory of every source (the first ``config.limit``), read as it is consumed
    (see ``iter_trajectories``)."""
    yield from itertools.islice(_every_trajectory(config, issues, sources), config.limit)


def _every_trajectory(
    config: PrepareConfig, issues: Issues, sources: list[tuple[Any, dict]]
) -> Iterator[Trajectory]:
    for src, opts in sources:
        for traj in iter_trajectories(
            src.paths,
            src.format,
            on_error=config.on_error,
            empty=config.outcome.empty,
            issues=issues,
            **opts,
        ):
            _source_fields(traj, src)
            yield traj


def _source_fields(traj: Trajectory, src: Any) -> None:
    traj.meta["score_field"] = src.score_field  # names the field in a later score error
    traj.meta["success_field"] = src.success_field  # and in a no-success-value error
    if src.success is not None:  # the whole source is successes (SFT data) / failures
        traj.outcome = replace(traj.outcome, success=src.success)
        # wins over every outcome.success rule, not only `field` (outcome.label reads it)
        traj.meta["source_success"] = src.success


def load_sources(
    config: PrepareConfig, issues: Issues
) -> tuple[list[Trajectory], dict[str, TaskPrompt]]:
    """All trajectories of all sources, and the task prompts by task name."""
    trajs: list[Trajectory] = []
    sources, prompts = source_options(config)
    for src, opts in sources:
        loaded = load_trajectories(
            src.paths,
            src.format,
            on_error=config.on_error,
            empty=config.outcome.empty,
            issues=issues,
            **opts,
        )
        for traj in loaded:
            _source_fields(traj, src)
        trajs += loaded
    return trajs, prompts


def label_all(trajs: list[Trajectory], config: PrepareConfig, issues: Issues) -> list[Trajectory]:
    """Apply the unfinished policy and the outcome rules; drop what cannot be labelled."""
    return [traj for traj in trajs if label_one(traj, config, issues)]


def label_one(traj: Trajectory, config: PrepareConfig, issues: Issues) -> bool:
    """Label one trajectory (unfinished policy, outcome rules); False when it is dropped."""
    oc = config.outcome
    try:
        if not traj.finished and oc.unfinished != "keep":
            info = traj.meta.get("info") or {}
            # name the field this record has: info.finished or a top-level finished when set,
            # else the missing pred
            if "finished" in info:
                name, why = "info.finished", "info.finished is false"
            elif (traj.meta.get("extra") or {}).get("finished") is False:
                name, why = "finished", "finished is false"
            else:
                name, why = "info.pred", "no info.pred: no final answer"
            err = DataError(
                f"trajectory is unfinished ({why})",
                field=name,
                reason="unfinished",
                hint="set outcome.unfinished: keep or skip",
                **_where(traj),
            )
            if oc.unfinished == "skip":
                issues.add(err)
                return False
            raise err
        traj.outcome = outcome.label(
            traj, success=oc.success, score=oc.score, f1_threshold=oc.f1_threshold
        )
        nat.assign_class(traj, config.strategy)  # raises when the strategy cannot place it
    except DataError as err:
        handle(err.at(**_where(traj)), config.on_error, issues)
        return False
    return True


class _Kept:
    """The kept examples of a window's rendered, fitted chunks (``fit.FittedChunk``, in read
    order), in ``order`` (the positions of the window in ``nat.select``'s order): their lengths
    at once (what packing plans on), the rest by :meth:`collect`."""

    def __init__(self, window: list, order: list[int], chunks: list) -> None:
        self.window, self.chunks = window, chunks
        self.status = np.concatenate([c.status for c in chunks])
        self.at = np.asarray(order, dtype=np.int64)
        self.kept = self.status == fit.KEPT
        self.slot = np.cumsum(self.kept) - 1  # the position of a kept example among the kept
        self.chosen = self.at[self.kept[self.at]]
        self.take = self.slot[self.chosen]
        self.all_lengths = np.concatenate([c.lengths for c in chunks])
        self.lengths = self.all_lengths[self.take]

    def collect(
        self,
        config: PrepareConfig,
        issues: Issues,
        per_class: dict[str, dict[str, int]],
        counts: dict[str, int],
    ) -> tuple[list, list, list, list]:
        """``ids``, ``masks``, classes and weights of the kept examples in order; handles the
        render failures in that order and adds to the per-class counts and drop counters."""
        window, chunks, at, kept, slot = self.window, self.chunks, self.at, self.kept, self.slot
        for c in chunks:
            for key, value in c.counts.items():
                counts[key] += value
        failures: dict[int, tuple[str, str]] = {}
        ids: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        offset = 0
        for c in chunks:
            failures.update((offset + k, f) for k, f in c.failures.items())
            offset += c.status.shape[0]
            a, b = c.split()
            ids += a
            masks += b
        cls = np.fromiter((ex.cls for ex in window), np.int64, count=len(window))
        for i in at[self.status[at] == fit.FAILED].tolist():
            reason, message = failures[i]
            err = DataError(message, reason=reason, **_where(window[i].traj))
            handle(err, config.on_error, issues)
        trained = np.concatenate([c.trained for c in chunks])
        for k, name in enumerate(config.strategy.class_names()):
            of_k = slot[kept & (cls == k)]
            c = per_class[name]
            c["examples"] += int(of_k.shape[0])
            c["tokens"] += int(self.all_lengths[of_k].sum())
            c["trained_tokens"] += int(trained[of_k].sum())
        take = self.take.tolist()
        classes = cls[self.chosen].tolist()
        weights = [window[i].weight for i in self.chosen.tolist()]
        return [ids[j] for j in take], [masks[j] for j in take], classes, weights


def timed_plan(
    lengths: list[int], capacity: int, algorithm: str, seed: int
) -> tuple[list[list[int]], float]:
    """``plan_bins`` and its seconds (run in a render worker while this process goes on)."""
    t0 = time.perf_counter()
    return plan_bins(lengths, capacity, algorithm, seed), time.perf_counter() - t0


def _nothing_left(counts: dict[str, int], issues: Issues, loaded: int) -> DataError:
    dropped = {k: v for k, v in counts.items() if v and k in DROP_REASONS}
    skipped = issues.as_dict()
    hint = "check pack.max_seq_len, the strategy's counts and the skip reasons"
    if "no_outcome" in skipped:
        hint = f"every no_outcome record was skipped: {outcome.NO_OUTCOME_HINT}"
    elif not loaded and not skipped:
        hint = "the sources hold no records: check sources.*.paths"
    return DataError(
        f"no example left to pack: {loaded} trajectories read, dropped {dropped}, "
        f"skipped {skipped}",
        reason="empty_dataset",
        hint=hint,
    )


DROP_REASONS = ("too_long", "no_trained_tokens", "no_trained_tokens_after_truncation")
DROP_COUNTERS = fit.COUNTERS


def input_paths(config: PrepareConfig) -> list[str]:
    """Every file or folder the config reads (the output may never hold one of them)."""
    paths = [config.render.tokenizer]
    for src in config.sources:
        paths += src.paths
        if isinstance(src, NatSource):
            paths += src.questions or []
            paths += [src.prompt] if src.prompt else []
    return paths


def prepare(
    config: PrepareConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
    inputs: Sequence[str | Path] = (),
) -> PrepareResult:
    """Run every stage and write ``out_dir`` (default ``config.output``); see the module doc.

    ``inputs``: more paths the output may not hold (the CLI passes the config file)."""
    # The cyclic GC is paused for the whole run. Loading builds millions of small acyclic
    # objects (JSON dicts, turns) that it would rescan again and again as the heap grows (half
    # the loading time; more when `datasets` is first imported on the way out), and forked
    # render workers inherit the pause, so no collection writes to the pages they share.
    with _gc_paused():
        return _prepare(config, out_dir, progress=progress, on_stage=on_stage, extra_inputs=inputs)


def _prepare(
    config: PrepareConfig,
    out_dir: str | Path | None,
    *,
    progress: bool,
    on_stage: Callable[[str], None] | None,
    extra_inputs: Sequence[str | Path],
) -> PrepareResult:
    from natscale.data.output import write_json
    from natscale.data.prepared import OUTPUT_KIND, OVERWRITE_HINT, PreparedDir
    from natscale.data.render import (
        Renderer,
        add_missing_tokens,
        load_tokenizer,
        read_chat_template,
        resolve_template,
    )

    t0 = time.perf_counter()
    say = on_stage or (lambda _msg: None)
    target = out_dir or config.output
    if not target:
        raise ValueError("no output directory: set `output:` in the config or pass --out")
    target = Path(target)
    inputs = [*input_paths(config), *extra_inputs]
    check_destination(
        target, config.overwrite, kind=OUTPUT_KIND, inputs=inputs, hint=OVERWRITE_HINT
    )
    rc, pc = config.render, config.pack
    tokenizer = load_tokenizer(rc.tokenizer)
    if rc.chat_template is not None:
        tokenizer.chat_template = read_chat_template(rc.chat_template, "render.chat_template")
    template = resolve_template(tokenizer, rc.template)
    added = add_missing_tokens(tokenizer, template) if rc.add_missing_special_tokens else []
    renderer = Renderer(
        tokenizer,
        template,
        observation_role=rc.observation_role,
        end_of_turn=rc.end_of_turn,
        paper_compat=rc.paper_compat,
        chat_template_kwargs=rc.chat_template_kwargs,
    )

    drops_call_text = renderer.template.drops_tool_call_text()
    unreadable = cache(lambda: unreadable_calls(renderer, tokenizer))
    issues = Issues()
    sources, prompts = source_options(config)
    keep = None
    if windows.needs_sampling(config.strategy):
        # a per-class sample needs the class sizes first: one pass that only labels
        say("counting the classes for strategy.counts")
        counter = windows.Selector(config.strategy, prompts)
        for traj in iter_sources(config, Issues(), sources):
            if label_one(traj, config, Issues()):
                counter.classify(traj)
        keep = windows.sampled_positions(counter.available, config.strategy, config.seed)
    selector = windows.Selector(config.strategy, prompts, keep)
    tally = {"loaded": 0, "unfinished": 0, "labelled": 0}
    offered: dict[str, dict[str, Any]] = {}  # the tools the kept trajectories offer, by name

    def examples() -> Iterator:
        for traj in iter_sources(config, issues, sources):
            tally["loaded"] += 1
            tally["unfinished"] += not traj.finished
            if label_one(traj, config, issues):
                tally["labelled"] += 1
                ex = selector.take(traj)
                if ex is not None:
                    for schema in traj.tools or ():
                        offered.setdefault(schema["function"]["name"], schema)
                    yield from nat.each_turn(ex) if rc.turns == "each" else (ex,)

    names = config.strategy.class_names()
    per_class = {n: {"examples": 0, "tokens": 0, "trained_tokens": 0} for n in names}
    counts = dict.fromkeys(DROP_COUNTERS, 0)
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    warned: dict[str, dict[str, Any]] = {}
    packed: list[dict[str, Any]] = []  # per window (= shard)
    all_lengths: list[np.ndarray] = []
    resolved = config.model_copy(update={"output": str(target)})

    def pack_window(
        k: int, window: list, chunks: list, shards: ShardWriter, stream, *, last: bool = False
    ) -> None:
        """Pack and write window ``k``. ``stream.call`` plans its rows in a render worker while
        this process gathers the examples; after the ``last`` window's plan the workers exit."""
        order = windows.class_order(window)  # nat.select's order: by class, then as read
        found = _Kept(window, order, chunks)
        lengths = found.lengths
        # window 0 packs with `seed` itself: data in one window packs as one global plan
        args = (lengths.tolist(), pc.max_seq_len, pc.algorithm, config.seed + k)
        t_call = time.perf_counter()  # without workers the plan is made here, in call()
        planned = stream.call(timed_plan, *args) if len(lengths) else None
        call_s = time.perf_counter() - t_call
        if last:
            stream.release()  # the workers exit once the plan is made
        ordered = [window[i] for i in order]
        for kind, w in data_warnings(
            ordered,
            {},
            config.strategy,
            prompts,
            drops_tool_call_text=drops_call_text,
            unreadable_calls=unreadable,
        ).items():
            warned.setdefault(kind, {"count": 0, "message": w["message"]})["count"] += w["count"]
        del ordered
        where = f"window {k}: " if k or len(window) == pc.window_examples else ""
        ids, masks, classes, weights = found.collect(config, issues, per_class, counts)
        del window[:], chunks[:], found  # the trajectories are not needed any more
        if planned is None:
            return
        say(f"{where}packing {len(ids)} examples into rows of {pc.max_seq_len}")
        t_wait = time.perf_counter()
        bins, plan_s = planned()
        wait_s = call_s + time.perf_counter() - t_wait
        rows = build_rows(
            bins, ids, masks, classes, weights, max_seq_len=pc.max_seq_len, pad_id=pad_id
        )
        del ids, masks
        bound = l2_bound(lengths, pc.max_seq_len)
        all_lengths.append(lengths.astype(np.int32))
        packed.append(
            {
                "examples": len(lengths),
                "rows": len(rows),
                "non_pad_tokens": int(lengths.sum()),
                "efficiency": efficiency(rows, pc.max_seq_len),
                "lower_bound": bound,
                "gap": round(len(rows) / bound - 1, 6) if bound else 0.0,
                "plan_s": round(plan_s, 4),
                "plan_wait_s": round(wait_s, 4),
            }
        )
        say(f"{where}writing {len(rows)} rows")
        shards.add(rows)

    def fill(tmp: PreparedDir) -> None:
        from tqdm import tqdm

        from natscale.data.render.batch import RenderStream

        shards = ShardWriter(tmp.root, progress=progress)
        say(f"loading trajectories and rendering them ({template} template)")
        # each chunk is rendered and fitted (fit.py) in a worker while the next ones are read
        post = partial(
            fit.fit_chunk,
            max_seq_len=pc.max_seq_len,
            overlong=pc.overlong,
            trim_tail=rc.trim_untrained_tail,
        )
        with (
            tqdm(desc="render", unit="traj", disable=not progress) as bar,
            RenderStream(
                renderer,
                mode=rc.instruction,
                acknowledgement=rc.acknowledgement,
                num_proc=config.num_proc,
                post=post,
                on_progress=bar.update,
            ) as stream,
        ):
            k, window, saved = 0, [], False

            def rendered() -> list:
                nonlocal saved
                if not saved:  # while the workers render the window's last chunks
                    tokenizer.save_pretrained(str(tmp.tokenizer))
                    save_config(resolved, tmp.prepare_config)
                    saved = True
                return stream.results()

            for ex in examples():
                window.append(ex)
                stream.put(ex)
                if len(window) == pc.window_examples:
                    pack_window(k, window, rendered(), shards, stream)
                    k, window = k + 1, []
                    # more may follow: free what the window left in cycles (datasets, arrow)
                    gc.collect()
            if window:
                chunks = rendered()
                bar.close()
                pack_window(k, window, chunks, shards, stream, last=True)
        if not packed:
            raise _nothing_left(counts, issues, tally["loaded"])
        sampling = selector.report()
        for kind, w in data_warnings([], sampling, config.strategy, prompts).items():
            warned[kind] = w
        for kind, w in warned.items():  # once per kind, with its count
            say(f"warning: {w['message']} ({w['count']}x, stats.json warnings.{kind})")
        files = shards.finish()
        lengths = np.concatenate(all_lengths)
        stats.update(
            _stats(config, template, renderer, tokenizer, added, pad_id, tally, sampling)
            | {
                "per_class": per_class,
                "total": {
                    k: sum(c[k] for c in per_class.values())
                    for k in ("examples", "tokens", "trained_tokens")
                },
                "packing": _packing_stats(pc, packed, files, l2_bound(lengths, pc.max_seq_len)),
                "truncated": {
                    "examples": counts["truncated"],
                    "tokens": counts["truncated_tokens"],
                },
                "dropped": {k: counts[k] for k in DROP_REASONS},
                "skipped": issues.as_dict(),
                "skipped_examples": issues.examples,
                "tail_tokens_trimmed": counts["tail_tokens_trimmed"],
                "warnings": warned,
            }
        )
        if offered:  # what `natscale eval --data` offers the agent (natscale.eval.prepared)
            stats["tools"] = list(offered.values())
        stats["elapsed_s"] = round(time.perf_counter() - t0, 3)
        write_json(tmp.stats, stats)

    stats: dict[str, Any] = {}
    out = PreparedDir(target).write(fill, overwrite=config.overwrite, inputs=inputs)
    return PrepareResult(out, stats)


def _stats(config, template, renderer, tokenizer, added, pad_id, tally, sampling) -> dict:
    return {
        "version": STATS_VERSION,
        "classes": config.strategy.class_names(),
        "strategy": config.strategy.name,
        "template": template,
        "turns": config.render.turns,
        "end_of_turn": renderer.end_of_turn,
        "tokenizer": {"vocab_size": len(tokenizer), "pad_id": pad_id, "added_tokens": added},
        "seed": config.seed,
        "trajectories": dict(tally),
        "sampling": sampling,
    }


def _packing_stats(pc, packed: list[dict[str, Any]], files: list[str], bound: int) -> dict:
    """Overall packing numbers (the L2 bound of all examples together) and per window."""
    rows = sum(w["rows"] for w in packed)
    non_pad = sum(w["non_pad_tokens"] for w in packed)
    return {
        "algorithm": pc.algorithm,
        "max_seq_len": pc.max_seq_len,
        "rows": rows,
        "slot_tokens": rows * pc.max_seq_len,
        "non_pad_tokens": non_pad,
        "efficiency": non_pad / (rows * pc.max_seq_len),
        "lower_bound": bound,
        "gap": round(rows / bound - 1, 6) if bound else 0.0,
        "plan_s": round(sum(w["plan_s"] for w in packed), 4),
        "plan_wait_s": round(sum(w["plan_wait_s"] for w in packed), 4),
        "window_examples": pc.window_examples,
        "shards": [{"file": f, **w} for f, w in zip(files, packed, strict=True)],
    }


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
