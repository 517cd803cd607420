"""Benchmark packing against peers: rows, efficiency, gap to the L2 lower bound, time.

    python benchmarks/data/bench_packing.py            # example data + gsm8k + hotpotqa presets
    python benchmarks/data/bench_packing.py --scale-num 0        # without the scale rows

On the same example lengths, for ``max_seq_len`` 1024, 2048, 4096 and 8192:

- natscale ``bfd_repair`` (the default), ``bfd`` and ``ffd`` (``natscale.data.packing.plan_bins``);
- TRL's BFD: ``trl.data_utils.pack_dataset(strategy="bfd")`` on a ``datasets.Dataset`` of the same
  lengths, once as one batch and once as ``SFTTrainer`` calls it (``Dataset.map`` with its default
  batch of 1000 examples, so BFD runs per 1000 examples);
- LLaMA-Factory's greedy knapsack (a port of ``greedy_knapsack`` in
  ``src/llamafactory/data/processor/processor_utils.py``: lengths ascending, each new row takes the
  longest remaining example that fits until none fits), over all lengths and per 1000 (its
  ``preprocessing_batch_size`` default, the ``Dataset.map`` batch it packs);
- axolotl's multipack first-fit (a port of ``pack_group`` in
  ``src/axolotl/utils/samplers/multipack.py``: examples in the sampler's random order, each to the
  first row with room and fewer than ``bin_size`` = 200 examples, groups of 100,000).

Scale rows (``--scale-num``, default 100,000 lengths, at ``--scale-capacities``, default all four):
natscale ``bfd_repair`` and ``bfd`` only, with the time per 1,000 lengths, on the gsm8k and
hotpotqa presets and on ``synth``: ReAct math trajectories of about 350 tokens from
``synth.py`` (the data of the 1M-trajectory prepare), rendered and tokenised as prepare does.

Lengths: the example data through ``natscale prepare`` (examples/configs/prepare_math.yaml), and
3,000 trajectories of the bench presets ``gsm8k`` and ``hotpotqa`` (``natscale.bench.presets``:
synthetic log-normal lengths, clipped to ``max_seq_len``; hotpotqa is the search-based QA preset,
the closest to StrategyQA). Times are the best of ``--repeat`` runs; the times of the two ports
are those of pure-Python re-implementations (axolotl runs its loop under numba), so only the
natscale and TRL times are the frameworks' own. Writes
``benchmarks/results/packing_<host>_<UTC time>.{json,md}`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.bench.datasets import synthetic_lengths  # noqa: E402
from natscale.bench.presets import DATA_PRESETS  # noqa: E402
from natscale.data.packing import plan_bins  # noqa: E402
from natscale.data.packing_search import l2_bound  # noqa: E402
from natscale.env import machine  # noqa: E402

CAPACITIES = (1024, 2048, 4096, 8192)
Bins = list[list[int]]


def example_lengths() -> list[int]:
    """Segment lengths of the example data as ``natscale prepare`` renders them."""
    import datasets

    from natscale.config.loader import load_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    cwd = os.getcwd()
    os.chdir(REPO)  # the config's paths are relative to the repository root
    try:
        cfg = load_config(
            REPO / "examples/configs/prepare_math.yaml", PrepareConfig, ["pack.max_seq_len=8192"]
        )
        with tempfile.TemporaryDirectory() as tmp:
            res = prepare(cfg, Path(tmp) / "math", progress=False)
            ds = datasets.load_from_disk(str(res.out_dir)).with_format("numpy")
            lengths = [int(x) for cu in ds["cu_seqlens"] for x in np.diff(cu)]
    finally:
        os.chdir(cwd)
    rng = random.Random(0)  # the source order is lost in the rows: a seeded random order
    rng.shuffle(lengths)
    return lengths


def synth_lengths(num: int, tokens: int = 350) -> list[int]:
    """Lengths of ``num`` synthetic ReAct trajectories (``synth.py``), rendered as prepare does."""
    sys.path.insert(0, str(REPO / "benchmarks" / "data"))
    import synth

    from natscale.config.prepare import StrategyConfig
    from natscale.data import nat
    from natscale.data.formats import load_trajectories
    from natscale.data.render import Renderer, load_tokenizer
    from natscale.data.render.batch import render_examples

    tok = load_tokenizer(REPO / "examples" / "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        paths = synth.write(Path(tmp), *synth.make(num, tok, tokens))
        trajs = load_trajectories(
            paths["trajectories"], "nat", questions=paths["questions"], prompt=paths["prompt"]
        )
    examples, _ = nat.select(trajs, StrategyConfig())
    return [len(e) for e in render_examples(Renderer(tok, "llama2"), examples, num_proc=1)]


def preset_lengths(name: str, capacity: int, num: int, seed: int) -> list[int]:
    dist = DATA_PRESETS[name]
    assert dist is not None
    rng = np.random.default_rng(seed)
    return synthetic_lengths(dist, num=num, seq_len=capacity, rng=rng).tolist()


# ---- peers ---------------------------------------------------------------------------------


def token_dataset(lengths: list[int]):
    """A ``datasets.Dataset`` of one ``input_ids`` list per example (built outside the timing)."""
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})


def trl_bfd(ds, capacity: int, batch_size: int | None) -> list[list[int]]:
    """TRL's pack_dataset on ``ds``; returns each row's segment lengths."""
    from trl.data_utils import pack_dataset

    kwargs = {} if batch_size == 1000 else {"batch_size": batch_size}
    packed = pack_dataset(ds, capacity, strategy="bfd", map_kwargs=kwargs)
    return [list(r) for r in packed.with_format("python")["seq_lengths"]]


def knapsack_llamafactory(lengths: list[int], capacity: int) -> Bins:
    """LLaMA-Factory's greedy knapsack (see the module docstring), on (length, index) pairs."""
    items = sorted((n, i) for i, n in enumerate(lengths))
    keys = [n for n, _ in items]
    rows: Bins = []
    while items:
        row, room = [], capacity
        while True:
            k = bisect.bisect(keys, room)  # the longest remaining example that fits
            if k == 0:
                break
            room -= keys.pop(k - 1)
            row.append(items.pop(k - 1)[1])
        rows.append(row)
    return rows


def first_fit_axolotl(lengths: list[int], capacity: int, seed: int, bin_size: int = 200) -> Bins:
    """axolotl's multipack first-fit (see the module docstring), in a seeded random order."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)  # its RandomSampler
    rows: Bins = []
    for start in range(0, len(order), 100_000):  # group_size
        room: list[int] = []
        members: Bins = []
        for i in order[start : start + 100_000]:
            n = lengths[i]
            for r in range(len(room)):  # linear first fit, as its numba loop
                if room[r] >= n and len(members[r]) < bin_size:
                    room[r] -= n
                    members[r].append(i)
                    break
            else:
                room.append(capacity - n)
                members.append([i])
        rows.extend(members)
    return rows


def chunked(fn: Callable[[list[int], int], Bins], size: int) -> Callable[[list[int], int], Bins]:
    def run(lengths: list[int], capacity: int) -> Bins:
        rows: Bins = []
        for a in range(0, len(lengths), size):
            rows += [[a + i for i in r] for r in fn(lengths[a : a + size], capacity)]
        return rows

    return run


def methods(seed: int) -> dict[str, tuple[str, Callable]]:
    """name -> (what runs, packer(lengths or for TRL the dataset, max_seq_len) -> rows of example
    indices, or for TRL rows of segment lengths)."""
    return {
        "natscale bfd_repair": ("natscale", lambda x, c: plan_bins(x, c, "bfd_repair", seed)),
        "natscale bfd": ("natscale", lambda x, c: plan_bins(x, c, "bfd", seed)),
        "natscale ffd": ("natscale", lambda x, c: plan_bins(x, c, "ffd", seed)),
        "TRL bfd (one batch)": ("trl", lambda x, c: trl_bfd(x, c, None)),
        "TRL bfd (SFTTrainer, map batches of 1000)": ("trl", lambda x, c: trl_bfd(x, c, 1000)),
        "LLaMA-Factory greedy knapsack (all)": ("port", knapsack_llamafactory),
        "LLaMA-Factory greedy knapsack (per 1000)": ("port", chunked(knapsack_llamafactory, 1000)),
        "axolotl first-fit": ("port", lambda x, c: first_fit_axolotl(x, c, seed)),
    }


def check(rows: list, lengths: list[int], capacity: int, kind: str) -> int:
    """Validate a plan (every example once, every row within capacity); returns its tokens."""
    if kind == "trl":  # rows of segment lengths
        sizes = sorted(n for r in rows for n in r)
        assert sizes == sorted(lengths), "TRL lost or split an example"
        assert all(sum(r) <= capacity for r in rows)
    else:
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= capacity for r in rows)
    return sum(lengths)


def scale_rows(args: argparse.Namespace) -> list[dict]:
    """natscale bfd_repair and bfd on ``--scale-num`` lengths: rows, gap and time per 1,000."""
    out = []
    synth = synth_lengths(args.scale_num) if "synth" in args.scale_data else []
    for data in args.scale_data:
        for cap in args.scale_capacities:
            if data == "synth":
                lengths = [min(n, cap) for n in synth]  # prepare truncates longer ones
            else:
                lengths = preset_lengths(data, cap, args.scale_num, args.seed)
            bound = l2_bound(lengths, cap)
            for algo in ("bfd_repair", "bfd"):
                best = float("inf")
                for _ in range(args.repeat):
                    gc.collect()
                    t0 = time.perf_counter()
                    rows = plan_bins(lengths, cap, algo, args.seed)
                    best = min(best, time.perf_counter() - t0)
                assert rows == plan_bins(lengths, cap, algo, args.seed), "not deterministic"
                tokens = check(rows, lengths, cap, "natscale")
                r = {
                    "data": data,
                    "max_seq_len": cap,
                    "examples": len(lengths),
                    "l2_bound": bound,
                    "method": f"natscale {algo}",
                    "rows": len(rows),
                    "gap": round(len(rows) / bound - 1, 5),
                    "efficiency": round(tokens / (len(rows) * cap), 5),
                    "time_ms": round(best * 1e3, 1),
                    "ms_per_1000": round(best * 1e6 / len(lengths), 2),
                }
                out.append(r)
                print(
                    f"scale {data:9s} {cap:5d} n={len(lengths)} L2={bound} {algo:10s} "
                    f"rows={r['rows']} gap={r['gap']:+.4f} {r['time_ms']:8.1f} ms "
                    f"({r['ms_per_1000']:.1f} ms per 1,000)",
                    flush=True,
                )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=["example", "gsm8k", "hotpotqa"])
    ap.add_argument("--capacities", type=int, nargs="+", default=list(CAPACITIES))
    ap.add_argument("--num", type=int, default=3000, help="trajectories per synthetic preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="time each packer N times, keep the best")
    ap.add_argument(
        "--scale-num", type=int, default=100_000, help="lengths per scale row (0: none)"
    )
    ap.add_argument("--scale-data", nargs="+", default=["synth", "gsm8k", "hotpotqa"])
    ap.add_argument("--scale-capacities", type=int, nargs="+", default=list(CAPACITIES))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    import trl.data_utils  # noqa: F401  (imported before any timing: it pulls in torch)

    load_before = os.getloadavg()
    base = example_lengths() if "example" in args.data else []
    results = []
    for data in args.data:
        for cap in args.capacities:
            lengths = base if data == "example" else preset_lengths(data, cap, args.num, args.seed)
            bound = l2_bound(lengths, cap)
            ds = token_dataset(lengths)
            for name, (kind, fn) in methods(args.seed).items():
                best = float("inf")
                arg = ds if kind == "trl" else lengths
                for _ in range(args.repeat):
                    gc.collect()
                    t0 = time.perf_counter()
                    rows = fn(arg, cap)
                    best = min(best, time.perf_counter() - t0)
                tokens = check(rows, lengths, cap, kind)
                r = {
                    "data": data,
                    "max_seq_len": cap,
                    "examples": len(lengths),
                    "l1_bound": -(-sum(lengths) // cap),
                    "l2_bound": bound,
                    "method": name,
                    "code": kind,
                    "rows": len(rows),
                    "gap": round(len(rows) / bound - 1, 5),
                    "efficiency": round(tokens / (len(rows) * cap), 5),
                    "time_ms": round(best * 1e3, 1),
                }
                results.append(r)
                print(
                    f"{data:9s} {cap:5d} L2={bound:5d} {name:42s} rows={r['rows']:5d} "
                    f"gap={r['gap']:+.4f} eff={r['efficiency']:.4f} {r['time_ms']:8.1f} ms",
                    flush=True,
                )

    names = list(methods(args.seed))
    head = ["data", "max_seq_len", "L2", *names]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for data in args.data:
        for cap in args.capacities:
            rs = [r for r in results if r["data"] == data and r["max_seq_len"] == cap]
            cells = [f"{r['rows']} ({100 * r['gap']:+.2f}%, {r['time_ms']:.0f} ms)" for r in rs]
            table.append(f"| {data} | {cap} | {rs[0]['l2_bound']} | " + " | ".join(cells) + " |")
    cols = ["data", "max_seq_len", "l2_bound", "method", "rows", "gap", "efficiency", "time_ms"]
    long = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    long += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    print("\n".join(table))

    scale = scale_rows(args) if args.scale_num else []
    stable = [
        "| data | max_seq_len | lengths | L2 | method | rows | gap | efficiency | time ms | "
        "ms per 1,000 lengths |",
        "|" + "---|" * 10,
    ]
    stable += [
        f"| {r['data']} | {r['max_seq_len']} | {r['examples']} | {r['l2_bound']} | {r['method']} | "
        f"{r['rows']} | {100 * r['gap']:+.2f}% | {r['efficiency']:.4f} | {r['time_ms']:.0f} | "
        f"{r['ms_per_1000']:.1f} |"
        for r in scale
    ]
    if scale:
        print("\n".join(stable))

    m = machine(("numpy", "datasets", "trl"))
    v = m["versions"]
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": m,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "num": args.num,
        "seed": args.seed,
        "repeat": args.repeat,
        "results": results,
        "scale_num": args.scale_num,
        "scale_results": scale,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"packing_{m['host']}_{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Packing benchmark ({result['date']})",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs (shared; load average before / after "
        f"{result['load_average_before']} / {result['load_average_after']})",
        f"- python {m['python']}, numpy {v['numpy']}, datasets {v['datasets']}, trl {v['trl']}, "
        f"natscale {m['git_commit'][:8]}",
        f"- lengths: example = examples/configs/prepare_math.yaml through natscale prepare "
        f"(3036 segments); gsm8k / hotpotqa = {args.num} synthetic log-normal lengths of the bench "
        f"presets (seed {args.seed}, clipped to max_seq_len); hotpotqa stands in for StrategyQA",
        f"- each cell: rows (gap to the Martello-Toth L2 lower bound, best of {args.repeat} "
        "times); the LLaMA-Factory and axolotl columns are pure-Python ports (their times are not "
        "the frameworks' own: axolotl's loop runs under numba)",
        "",
        *table,
        "",
        "## All numbers",
        "",
        *long,
        "",
        *(
            [
                f"## Scale: {args.scale_num} lengths",
                "",
                "synth = ReAct math trajectories of about 350 tokens (benchmarks/data/synth.py) "
                "rendered and tokenised as prepare does (the data of the 1M-trajectory prepare); "
                f"gsm8k / hotpotqa = the presets (seed {args.seed}); best of {args.repeat}.",
                "",
                *stable,
            ]
            if scale
            else []
        ),
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print(f"bench_packing: wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
