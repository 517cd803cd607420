"""Join the ``natscale prepare`` outputs of several nodes into one prepared folder.

Preparing on several nodes: split the input files between the nodes, run one ``natscale prepare``
per node (same config apart from ``sources`` and ``output``), then ``natscale merge OUT PART...``
(:func:`merge_prepared`). The result is an ordinary prepared folder: the parts' Arrow shards, in
the order of the parts, laid out as one ``datasets`` folder (``data-*.arrow`` + ``state.json`` +
``dataset_info.json``, what ``datasets.load_from_disk`` and the trainer read); ``stats.json``
sums the parts' counts, recomputes the packing efficiency and the L2 bound over every example
(from the rows' ``cu_seqlens``), keeps every shard's own numbers and lists the parts under
``merged_from``; ``prepare_config.yaml`` is the first part's, with the sources of all parts; the
tokenizer is the first part's (every part must have the same one).

The parts must agree on what makes their rows one dataset: classes, strategy, template,
``max_seq_len``, the row columns, the tokenizer files, and every setting of their prepare configs
but those that only say where or how a part was made (``PER_PART``). No rows may come twice: two
parts may not share a data file or a folder they were merged from (``merged_from``, absolute
paths). The output may not lie
inside a part (merge never changes its parts). The Arrow files are hard-linked where
the filesystem allows (no copy; they are never modified in place), else copied. Nothing is
written unless every part is complete and compatible, and the output is written atomically.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from natscale.data.packing_search import l2_bound

# stats.json fields the parts must share (dotted paths)
SAME = ("classes", "strategy", "template", "end_of_turn", "tokenizer.vocab_size",
        "tokenizer.pad_id", "packing.max_seq_len")  # fmt: skip


# prepare config settings the parts may differ in: where a part was read from and written to, and
# how it was made (the sampling seed and counts are per part: the merged stats sum what was asked)
PER_PART = ("output", "overwrite", "seed", "num_proc", "on_error", "sources", "render.tokenizer",
            "strategy.counts", "pack.window_examples", "pack.algorithm")  # fmt: skip
# stats.json fields merging reads: each must be an object in every part
STATS_OBJECTS = ("trajectories", "sampling", "per_class", "total", "packing", "truncated",
                 "dropped", "skipped")  # fmt: skip


class MergeError(ValueError):
    """The parts cannot be merged (bad input: exit code 2)."""


def _get(stats: dict, dotted: str) -> Any:
    node: Any = stats
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _check_stats(part: Path, stats: Any) -> None:
    """The fields of a part's stats.json that merging reads are there, with the right types."""
    where = part / "stats.json"
    if not isinstance(stats, dict):
        raise MergeError(f"{where}: not a JSON object; prepare this part again")
    for key in STATS_OBJECTS:
        if not isinstance(stats.get(key), dict):
            raise MergeError(
                f"{where}: field {key!r} is missing or not an object: the file is damaged or "
                "was edited; prepare this part again"
            )
    for key in ("rows", "non_pad_tokens", "max_seq_len"):
        value = stats["packing"].get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise MergeError(
                f"{where}: field 'packing.{key}' is {value!r}, not a whole number: the file is "
                "damaged or was edited; prepare this part again"
            )


def _check_dataset_info(part: Path) -> None:
    """A part's dataset_info.json is a JSON object (its columns are compared with the others')."""
    where = part / "dataset_info.json"
    try:
        info = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"{where}: unreadable ({exc}); prepare this part again") from exc
    if not isinstance(info, dict):
        raise MergeError(f"{where}: not a JSON object; prepare this part again")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def _config_settings(config: Any) -> dict[str, Any]:
    """A part's prepare config as dotted settings, without the ``PER_PART`` ones."""
    flat = _flat(config.model_dump(mode="json"))
    return {
        k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in PER_PART)
    }


def _differ(part: Path, first: Path, what: str, mine: Any, theirs: Any) -> MergeError:
    return MergeError(
        f"{part} and {first} were prepared differently: {what} is {mine!r} in {part} but "
        f"{theirs!r} in {first}; prepare every part with the same config (only sources and "
        "output may differ)"
    )


def _check_compatible(parts: Sequence[Path], stats: list[dict], configs: list[Any]) -> None:
    first, s0 = parts[0], stats[0]
    t0 = first / "tokenizer"
    settings0 = _config_settings(configs[0])
    for part, s, config in zip(parts, stats, configs, strict=True):
        if not (part / "tokenizer").is_dir():
            raise MergeError(f"{part}: has no tokenizer/ folder; prepare this part again")
        if part == first:
            continue
        for key in SAME:
            if _get(s, key) != _get(s0, key):
                raise _differ(part, first, f"stats.json {key}", _get(s, key), _get(s0, key))
        settings = _config_settings(config)
        for key in sorted(set(settings) | set(settings0)):
            if settings.get(key) != settings0.get(key):
                what = f"prepare_config.yaml {key}"
                raise _differ(part, first, what, settings.get(key), settings0.get(key))
        t = part / "tokenizer"
        names = sorted(p.name for p in t0.iterdir() if p.is_file())
        other = sorted(p.name for p in t.iterdir() if p.is_file())
        _, diff, errors = filecmp.cmpfiles(t0, t, names, shallow=False)
        if names != other or diff or errors:
            raise MergeError(
                f"{part}: its tokenizer/ differs from {t0} ({', '.join(diff + errors) or 'files'})"
                "; prepare every part with the same tokenizer"
            )


def _origins(part: Path, stats: dict) -> set[Path]:
    """The prepared folders whose rows ``part`` holds: itself, and the parts it was merged from."""
    found = {part.resolve()}
    merged_from = stats.get("merged_from")
    if isinstance(merged_from, list):
        found |= {Path(p).resolve() for p in merged_from if isinstance(p, str)}
    return found


def _check_disjoint(parts: Sequence[Path], stats: list[dict]) -> None:
    """No rows twice: no two parts hold the same data file (a hard link, as merge makes) or
    rows of the same prepared folder (a merged folder and one of its own parts)."""
    from natscale.data.shards import data_files

    owner: dict[tuple[int, int], tuple[Path, str]] = {}
    for part in parts:
        for name in data_files(part):
            st = (part / name).stat()
            other = owner.setdefault((st.st_dev, st.st_ino), (part, name))
            if other[0] != part:
                raise MergeError(
                    f"{part / name} and {other[0] / other[1]} are the same file: {part} and "
                    f"{other[0]} hold the same rows (one was merged from the other?); merging "
                    "them would repeat those rows. Give each prepared folder once"
                )
    for i, (part, s) in enumerate(zip(parts, stats, strict=True)):
        mine = _origins(part, s)
        for other, t in zip(parts[:i], stats[:i], strict=True):
            shared = sorted(mine & _origins(other, t))
            if shared:
                raise MergeError(
                    f"{part} and {other} both hold the rows of {shared[0]} (see merged_from in "
                    "their stats.json); merging them would repeat those rows. Give each "
                    "prepared folder once"
                )


def _check_distinct_inputs(parts: Sequence[Path], configs: list[Any]) -> None:
    """No two parts made from the same sources with the same sampling (seed, counts, windows):
    they hold the same rows, whether prepared twice (a loop's ``$i`` left out) or copied."""
    seen: dict[str, Path] = {}
    for part, config in zip(parts, configs, strict=True):
        dumped = config.model_dump(mode="json")
        made = {
            "sources": dumped["sources"],
            "seed": dumped.get("seed"),
            "counts": (dumped.get("strategy") or {}).get("counts"),
            "window": (dumped.get("pack") or {}).get("window_examples"),
        }
        other = seen.setdefault(json.dumps(made, sort_keys=True), part)
        if other != part:
            raise MergeError(
                f"{part} and {other} were prepared from the same sources with the same seed "
                "(prepare_config.yaml): they hold the same rows, which merging would repeat. "
                "Prepare each part from its own part of the input (a $i left out of the "
                "command?), or give the folder once"
            )


def _summed(dicts: list[dict]) -> dict:
    """Numbers added key by key (nested dicts too); anything else from the first dict."""
    out: dict = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, bool) or value is None or isinstance(value, (str, list)):
                out.setdefault(key, value)
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, dict):
                out[key] = _summed([out.get(key, {}), value])
    return out


def _lengths(folder: Path) -> np.ndarray:
    """Every example's length, from the rows' cu_seqlens (only that column is read)."""
    from datasets import load_from_disk

    ds = load_from_disk(str(folder)).select_columns(["cu_seqlens"]).with_format("numpy")
    out = [np.diff(cu) for batch in ds.iter(batch_size=4096) for cu in batch["cu_seqlens"]]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def offered_tools(stats: list[dict]) -> list[dict[str, Any]]:
    """The tool schemas the parts' trajectories offered (``stats.json`` ``tools``): each name
    once, the first part's schema, in order."""
    tools: dict[str, Any] = {}
    for s in stats:
        for schema in s.get("tools", []):
            tools.setdefault(schema["function"]["name"], schema)
    return list(tools.values())


def merged_stats(parts: Sequence[Path], stats: list[dict], files: list[str]) -> dict:
    """The stats.json of the merged folder (see the module doc)."""
    s0 = stats[0]
    pk = [s["packing"] for s in stats]
    max_len = pk[0]["max_seq_len"]
    rows = sum(p["rows"] for p in pk)
    non_pad = sum(p["non_pad_tokens"] for p in pk)
    bound = l2_bound(np.concatenate([_lengths(p) for p in parts]), max_len)
    shards = [sh for p in pk for sh in p.get("shards", [])]
    for sh, name in zip(shards, files, strict=False):
        sh["file"] = name
    skipped_examples: dict[str, list[str]] = {}
    for s in stats:
        for reason, msgs in s.get("skipped_examples", {}).items():
            kept = skipped_examples.setdefault(reason, [])
            kept.extend(msgs[: max(0, 3 - len(kept))])
    warnings: dict[str, dict] = {}
    for s in stats:
        for kind, w in s.get("warnings", {}).items():
            warnings.setdefault(kind, {"count": 0, "message": w["message"]})["count"] += w["count"]
    sampling = _summed([s["sampling"] for s in stats])
    for name, entry in sampling.items():  # requested is per part: the sum of what was asked
        if isinstance(entry, dict) and "requested" in entry:
            asked = [s["sampling"][name].get("requested") for s in stats]
            entry["requested"] = None if None in asked else sum(asked)
    tools = offered_tools(stats)
    return {
        **({"tools": tools} if tools else {}),
        **{k: s0[k] for k in ("version", "classes", "strategy", "template", "end_of_turn")},
        "turns": s0.get("turns", "all"),  # the config check made every part's the same
        "tokenizer": s0["tokenizer"],
        "seed": s0.get("seed"),
        "trajectories": _summed([s["trajectories"] for s in stats]),
        "sampling": sampling,
        "per_class": _summed([s["per_class"] for s in stats]),
        "total": _summed([s["total"] for s in stats]),
        "packing": {
            "algorithm": pk[0]["algorithm"],
            "max_seq_len": max_len,
            "rows": rows,
            "slot_tokens": rows * max_len,
            "non_pad_tokens": non_pad,
            "efficiency": non_pad / (rows * max_len) if rows else 0.0,
            "lower_bound": bound,
            "gap": round(rows / bound - 1, 6) if bound else 0.0,
            "plan_s": round(sum(p.get("plan_s", 0.0) for p in pk), 4),
            "plan_wait_s": round(sum(p.get("plan_wait_s", 0.0) for p in pk), 4),
            "window_examples": pk[0].get("window_examples"),
            "shards": shards,
        },
        "truncated": _summed([s["truncated"] for s in stats]),
        "dropped": _summed([s["dropped"] for s in stats]),
        "skipped": dict(sorted(sum((Counter(s["skipped"]) for s in stats), Counter()).items())),
        "skipped_examples": skipped_examples,
        "tail_tokens_trimmed": sum(s.get("tail_tokens_trimmed", 0) for s in stats),
        "warnings": warnings,
        "merged_from": [str(p.resolve()) for p in parts],
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge_prepared(
    parts: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, overwrite: bool = False
) -> tuple[Path, dict]:
    """Merge the prepared folders ``parts`` (in this order) into ``out_dir``; returns the
    folder's resolved path and its stats."""
    from natscale.config.loader import load_config, save_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.output import write_json
    from natscale.data.prepared import PreparedDataError, PreparedDir
    from natscale.data.shards import join_shards

    t0 = time.perf_counter()
    folders = [Path(p) for p in parts]
    if not folders:
        raise MergeError("no prepared folder to merge")
    if len({p.resolve() for p in folders}) != len(folders):
        raise MergeError("a prepared folder is given twice")
    target = Path(out_dir)
    for folder in folders:
        if folder.resolve() in target.resolve().parents:
            raise MergeError(
                f"{target} is inside {folder}, one of the parts; merge never writes into its "
                "parts: choose an output outside them"
            )
    for folder in folders:
        try:
            PreparedDir(folder).check_complete()
        except PreparedDataError as exc:
            raise MergeError(str(exc)) from exc
    for folder in folders:  # join_shards reads it; check_complete only checks it is there
        _check_dataset_info(folder)
    stats = [json.loads(PreparedDir(p).stats.read_text(encoding="utf-8")) for p in folders]
    for folder, s in zip(folders, stats, strict=True):
        _check_stats(folder, s)
    _check_disjoint(folders, stats)
    configs = [load_config(PreparedDir(p).prepare_config, PrepareConfig) for p in folders]
    _check_compatible(folders, stats, configs)
    _check_distinct_inputs(folders, configs)
    sources = [src for cfg in configs for src in cfg.sources]
    config = configs[0].model_copy(update={"sources": sources, "output": str(target)})
    merged: dict = {}

    def fill(tmp: PreparedDir) -> None:
        files = join_shards(folders, tmp.root, place=_link_or_copy)
        merged.update(merged_stats(folders, stats, files))
        shutil.copytree(PreparedDir(folders[0]).tokenizer, tmp.tokenizer)
        save_config(config, tmp.prepare_config)
        merged["elapsed_s"] = round(time.perf_counter() - t0, 3)
        write_json(tmp.stats, merged)

    # merge has no config: its only switch is --overwrite
    out = PreparedDir(target).write(
        fill, overwrite=overwrite, inputs=folders, hint="remove it or pass --overwrite"
    )
    return out, merged
