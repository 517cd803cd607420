"""Benchmark `natscale prepare`: trajectories/s for rendering + tokenising, and end to end.

    python benchmarks/data/bench_prepare.py --cores 2 --num-proc 1 2

Synthesises ``--n`` NAT-release trajectories of about ``--tokens`` tokens (ReAct math, see
synth.py), then times (a) the render + tokenise stage alone and (b) the whole ``prepare()``
(load, label, mark, render, pack, write) for each ``--num-proc``; and the whole ``prepare()`` on
the bundled example data (packing efficiency at ``--max-seq-len``). Prints a table and writes
``benchmarks/results/data_prepare_<host>_<date>.{json,md}`` with the machine, versions, load
average and the command. Wall-clock rates on a shared machine depend on its load, so CPU seconds
(this process plus its workers) are reported too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

from natscale.config.prepare import PrepareConfig, StrategyConfig  # noqa: E402
from natscale.data import nat  # noqa: E402
from natscale.data.formats import load_trajectories  # noqa: E402
from natscale.data.prepare import prepare  # noqa: E402
from natscale.data.render import Renderer, load_tokenizer  # noqa: E402
from natscale.data.render.batch import render_examples  # noqa: E402
from natscale.env import machine  # noqa: E402


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    gc.collect()  # every measurement starts from a collected heap (outside the timing)
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def gc_paused(fn):
    """``fn`` run with the cyclic GC paused, as prepare() runs its stages (workers inherit it)."""

    def run():
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()

    return run


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def config(paths: dict, args, num_proc: int) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {
            "sources": [
                {
                    "format": "nat",
                    "paths": [str(paths["trajectories"])],
                    "questions": [str(paths["questions"])],
                    "prompt": str(paths["prompt"]),
                }
            ],
            "render": {
                "tokenizer": args.tokenizer,
                "template": args.template,
                "paper_compat": args.paper_compat,
            },
            "pack": {"max_seq_len": args.max_seq_len},
            "num_proc": num_proc,
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="synthetic trajectories")
    ap.add_argument("--tokens", type=int, default=1000, help="target tokens per trajectory")
    ap.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cores", type=int, default=None, help="pin to the first N cores")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each timing")
    ap.add_argument("--tokenizer", default=str(REPO / "examples" / "tokenizer"))
    ap.add_argument("--template", default="llama2")
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument(
        "--paper-compat", action="store_true", help="render.paper_compat: per-segment tokenising"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tok = load_tokenizer(args.tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    paths = synth.write(tmp / "data", *synth.make(args.n, tok, args.tokens))
    trajs = load_trajectories(
        paths["trajectories"], "nat", questions=paths["questions"], prompt=paths["prompt"]
    )
    examples, _ = nat.select(trajs, StrategyConfig())
    renderer = Renderer(tok, args.template, paper_compat=args.paper_compat)
    load_before = os.getloadavg()
    rows = []
    for num_proc in args.num_proc:
        best = None
        for _ in range(args.repeat):
            res, wall, cpu = timed(
                gc_paused(lambda np_=num_proc: render_examples(renderer, examples, num_proc=np_))
            )
            if best is None or wall < best[1]:
                best = (res, wall, cpu)
        res, wall, cpu = best
        tokens = sum(len(e) for e in res)
        rows.append(
            {
                "stage": "render+tokenise",
                "data": f"synthetic {args.n} x ~{args.tokens} tok",
                "num_proc": num_proc,
                "trajectories": len(examples),
                "tokens_per_traj": round(tokens / len(res)),
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "traj_per_s": round(len(examples) / wall),
                "traj_per_cpu_s": round(len(examples) / cpu),
                "tokens_per_s": round(tokens / wall),
            }
        )
        stats, wall, cpu = None, None, None
        best = None
        for k in range(args.repeat):
            out = tmp / f"out_{num_proc}_{k}"
            res, wall, cpu = timed(
                lambda o=out, np_=num_proc: prepare(config(paths, args, np_), o, progress=False)
            )
            if best is None or wall < best[1]:
                best = (res.stats, wall, cpu)
        stats, wall, cpu = best
        rows.append(
            {
                "stage": "prepare (end to end)",
                "data": f"synthetic {args.n} x ~{args.tokens} tok",
                "num_proc": num_proc,
                "trajectories": stats["trajectories"]["loaded"],
                "tokens_per_traj": round(stats["total"]["tokens"] / stats["total"]["examples"]),
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "traj_per_s": round(stats["trajectories"]["loaded"] / wall),
                "traj_per_cpu_s": round(stats["trajectories"]["loaded"] / cpu),
                "tokens_per_s": round(stats["total"]["tokens"] / wall),
                "packing_efficiency": round(stats["packing"]["efficiency"], 4),
            }
        )
    example = None
    ex_dir = REPO / "examples" / "math_react"
    if (ex_dir / "trajectories.json").is_file():
        ex_paths = {
            "trajectories": ex_dir / "trajectories.json",
            "questions": ex_dir / "questions.jsonl",
            "prompt": ex_dir / "prompt.json",
        }
        res, wall, cpu = timed(
            lambda: prepare(config(ex_paths, args, 1), tmp / "example", progress=False)
        )
        st = res.stats
        example = {
            "stage": "prepare (end to end)",
            "data": "examples/math_react",
            "num_proc": 1,
            "trajectories": st["trajectories"]["loaded"],
            "tokens_per_traj": round(st["total"]["tokens"] / st["total"]["examples"]),
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "traj_per_s": round(st["trajectories"]["loaded"] / wall),
            "traj_per_cpu_s": round(st["trajectories"]["loaded"] / cpu),
            "tokens_per_s": round(st["total"]["tokens"] / wall),
            "packing_efficiency": round(st["packing"]["efficiency"], 4),
        }
        rows.append(example)
    result = {
        "benchmark": "data_prepare",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "template": args.template,
        "paper_compat": args.paper_compat,
        "tokenizer": _rel(args.tokenizer),
        "max_seq_len": args.max_seq_len,
        "machine": machine(("tokenizers", "datasets")),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": rows,
    }
    cols = [
        "stage",
        "data",
        "num_proc",
        "tokens_per_traj",
        "wall_s",
        "cpu_s",
        "traj_per_s",
        "traj_per_cpu_s",
        "tokens_per_s",
        "packing_efficiency",
    ]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"data_prepare_{result['machine']['host']}_{dt.date.today().isoformat()}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    v = m["versions"]
    md = [
        f"# natscale prepare benchmark ({result['date']})",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, pinned to cores {m['cores_used']}",
        f"- load average before / after: {result['load_average_before']} / {result['load_average_after']}",
        f"- python {m['python']}, tokenizers {v['tokenizers']}, "
        f"transformers {v['transformers']}, datasets {v['datasets']}, "
        f"natscale {m['git_commit'][:8]}",
        f"- template {args.template}, paper_compat {args.paper_compat}, "
        f"tokenizer `{result['tokenizer']}`, max_seq_len {args.max_seq_len}",
        "- cpu_s = user + system seconds of this process and its workers; traj_per_cpu_s is the "
        "rate per fully used core",
        "",
        *table,
        "",
        "On a loaded machine wall-clock rates fall below the CPU rates (the load average says how "
        "many processes shared the cores). The render stage runs in `num_proc` workers with no "
        "shared state, so with N idle cores it approaches N x `traj_per_cpu_s`; loading, packing "
        "and writing run in one process.",
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print(f"bench_prepare: wrote {out / stem}.json and .md")
    shutil.rmtree(tmp, ignore_errors=True)  # ~1 GB of synthetic data and prepared outputs
    return 0


if __name__ == "__main__":
    sys.exit(main())
