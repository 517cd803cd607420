"""Benchmark `natscale prepare` at scale: time and peak memory for 10k, 100k, 1M trajectories.

    python benchmarks/data/bench_prepare_scale.py --n 10000 100000 1000000 --work /tmp/scale

For each N it writes N synthetic ReAct math trajectories of about ``--tokens`` tokens (the
NAT release format: a JSON list with one trajectory per line, as ``examples/math_react``; one
question per three trajectories; see synth.py) to ``--work``, streamed to the file rather than
held in memory, then runs ``natscale prepare`` on it as a subprocess and measures its wall time
and peak memory: the peak of the summed PSS of the whole process tree (the prepare process and
its render workers, sampled every 0.2 s; a page shared by k processes counts 1/k in each, so
this is the memory the tree holds), the same for RSS (shared copy-on-write pages counted in
every process: an over-count) and the largest single process's peak RSS (``ru_maxrss`` of the
reaped children, exact). It writes the table (N, tokens, rows, shards, wall s, tokens/s, peak RSS,
packing efficiency, gap to the L2 bound) to
``benchmarks/results/data_prepare_scale_<host>_<date>.{json,md}``, and deletes the files it
generated (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

from natscale.env import machine  # noqa: E402


def steps_for(tokenizer, target_tokens: int) -> int:
    """ReAct steps per trajectory for about ``target_tokens`` tokens (as synth.make)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    probe = synth._step(random.Random(1), 1)
    per_step = sum(count(m["content"]) + 6 for m in probe)
    fixed = count(synth.INSTRUCTION) + count(synth.PROMPT["templates"]["success"]) + 60
    return max(1, round((target_tokens - fixed) / per_step))


def write_data(out: Path, n: int, steps: int, seed: int = 0) -> Path:
    """N trajectories, their questions and the prompt file, one record at a time."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    traj_path, q_path = out / "trajectories.json", out / "questions.jsonl"
    with open(traj_path, "w") as tf, open(q_path, "w") as qf:
        tf.write("[\n")
        for i in range(n):
            qid = f"q{i // 3}"
            if i % 3 == 0:
                who, what = rng.choice(synth.NAMES), rng.choice(synth.ITEMS)
                a, b = rng.randint(2, 500), rng.randint(2, 500)
                question = f"{who} has {a} {what} and buys {b} more. How many {what} now?"
                qf.write(
                    json.dumps({"id": qid, "question": question, "answer": f"#### {a + b}"}) + "\n"
                )
            ok = rng.random() < 0.4
            pred = a + b if ok else a + b + rng.randint(1, 9)
            k = rng.randint(max(1, steps // 2), steps + steps // 2)
            conv = [m for j in range(k) for m in synth._step(rng, j)]
            conv += [
                {"role": "assistant", "content": f"Thought: Done.\nAction: finish[{pred}]"},
                {"role": "user", "content": "Observation: Episode finished"},
            ]
            for m in conv[-2:]:
                m["loss"] = m["role"] == "assistant"
            info = {"reward": ok, "pred": str(pred), "gt": str(a + b), "finished": True}
            rec = {"id": qid, "source": 0.2, "info": info, "conversations": conv}
            tf.write(json.dumps(rec) + (",\n" if i < n - 1 else "\n"))
        tf.write("]\n")
    (out / "prompt.json").write_text(json.dumps(synth.PROMPT))
    return out


def write_config(data: Path, path: Path, args) -> Path:
    import yaml

    cfg = {
        "seed": 42,
        "num_proc": args.num_proc,
        "sources": [
            {
                "format": "nat",
                "paths": [str(data / "trajectories.json")],
                "questions": [str(data / "questions.jsonl")],
                "prompt": str(data / "prompt.json"),
            }
        ],
        "outcome": {"success": "field", "unfinished": "keep"},
        "strategy": {"name": "nat"},
        "render": {"tokenizer": str(args.tokenizer), "template": "llama2"},
        "pack": {"max_seq_len": args.max_seq_len, "window_examples": args.window},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tree_memory(pid: int) -> tuple[int, int]:
    """Summed RSS and PSS (bytes) of ``pid`` and its descendants; (0, 0) once it is gone. PSS
    splits a page shared by k processes (the forked workers' copy-on-write pages) into k parts,
    so its sum is the memory the tree really holds."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def run_prepare(config: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "natscale.cli", "prepare", str(config), "--out", str(out)]
    cmd.append("--no-progress")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed ({proc.returncode}):\n{err[-4000:]}")
    summary = [line for line in err.splitlines() if " trajectories -> " in line]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_tree_rss_gb": round(peak[0] / 1e9, 3),
        "peak_tree_pss_gb": round(peak[1] / 1e9, 3),
        # ru_maxrss (KiB on Linux): the largest of the reaped children so far
        "peak_process_rss_gb": round(after.ru_maxrss * 1024 / 1e9, 3),
        "summary": summary[-1] if summary else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--tokens", type=int, default=350, help="tokens per trajectory (about)")
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument("--window", type=int, default=100_000, help="pack.window_examples")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--tokenizer", default=str(REPO / "examples" / "tokenizer"))
    ap.add_argument("--work", default="/tmp/natscale_prepare_scale", help="scratch folder")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    steps = steps_for(AutoTokenizer.from_pretrained(args.tokenizer), args.tokens)
    work = Path(args.work)
    if work.exists():
        raise SystemExit(f"{work} exists; remove it or pass another --work")
    load_before = os.getloadavg()
    results = []
    try:
        for n in args.n:
            data = work / f"data_{n}"
            t0 = time.perf_counter()
            write_data(data, n, steps)
            gen_s = time.perf_counter() - t0
            cfg = write_config(data, work / f"prepare_{n}.yaml", args)
            out = work / f"out_{n}"
            print(
                f"bench_prepare_scale: N={n}: data written in {gen_s:.0f}s, preparing", flush=True
            )
            res = run_prepare(cfg, out)
            stats = json.loads((out / "stats.json").read_text())
            pk = stats["packing"]
            tokens = stats["total"]["tokens"]
            row = {
                "n": n,
                "input_mb": round((data / "trajectories.json").stat().st_size / 1e6, 1),
                "tokens": tokens,
                "rows": pk["rows"],
                "shards": len(pk["shards"]),
                "wall_s": res["wall_s"],
                "cpu_s": res["cpu_s"],
                "tokens_per_s": round(tokens / res["wall_s"]),
                "peak_tree_rss_gb": res["peak_tree_rss_gb"],
                "peak_tree_pss_gb": res["peak_tree_pss_gb"],
                "peak_process_rss_gb": res["peak_process_rss_gb"],
                "efficiency": round(pk["efficiency"], 5),
                "lower_bound": pk["lower_bound"],
                "gap": pk["gap"],
                "worst_shard_gap": max(s["gap"] for s in pk["shards"]),
                "plan_s": pk["plan_s"],
                "output_gb": round(sum(f.stat().st_size for f in out.glob("data-*")) / 1e9, 2),
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
            results.append(row)
            print(f"bench_prepare_scale: {json.dumps(row)}", flush=True)
            if not args.keep:
                shutil.rmtree(data)
                shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_results(results, args, load_before)
    return 0


def write_results(results: list[dict], args, load_before) -> None:
    result = {
        "benchmark": "data_prepare_scale",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "tokens_per_traj": args.tokens,
        "max_seq_len": args.max_seq_len,
        "window_examples": args.window,
        "num_proc": args.num_proc,
        "machine": machine(("tokenizers", "datasets", "pyarrow")),
        "load_average_before": [round(x, 2) for x in load_before],
        "results": results,
    }
    cols = [
        ("n", "N"),
        ("tokens", "tokens"),
        ("rows", "rows"),
        ("shards", "shards"),
        ("wall_s", "wall s"),
        ("cpu_s", "cpu s"),
        ("tokens_per_s", "tokens/s"),
        ("peak_tree_pss_gb", "peak PSS, tree (GB)"),
        ("peak_tree_rss_gb", "peak RSS, tree (GB)"),
        ("peak_process_rss_gb", "peak RSS, one process (GB)"),
        ("efficiency", "packing efficiency"),
        ("gap", "gap to L2"),
        ("worst_shard_gap", "worst shard gap"),
        ("output_gb", "output GB"),
    ]
    table = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c[0], "")) for c in cols) + " |" for r in results]
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"data_prepare_scale_{result['machine']['host']}_{dt.date.today().isoformat()}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    md = [
        f"# natscale prepare at scale ({result['date']})",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs (shared), {m['mem_gib']} GiB",
        f"- load average before: {result['load_average_before']}; after each N: "
        + ", ".join(f"{r['n']}: {r['load_average_after']}" for r in results),
        f"- data: synthetic ReAct math trajectories (about {args.tokens} tokens), NAT release "
        f"JSON; `num_proc: {args.num_proc}`, `max_seq_len: {args.max_seq_len}`, "
        f"`pack.window_examples: {args.window}`",
        "- peak PSS, tree: the largest sum of PSS over the prepare process and its render "
        "workers, sampled every 0.2 s (a page shared by k processes counts 1/k in each: the "
        "memory the tree holds); peak RSS, tree: the same with RSS (shared pages counted in "
        "every process, an over-count); one process: the largest `ru_maxrss` of one process",
        "- gap to L2: rows / the L2 bound of all examples together - 1; worst shard gap: the "
        "largest gap of one window against its own bound",
        "",
        *table,
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print(f"bench_prepare_scale: wrote {out / stem}.json and .md")


if __name__ == "__main__":
    raise SystemExit(main())
