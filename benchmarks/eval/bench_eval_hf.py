"""Benchmark the ``hf`` eval backend: batched episodes vs one episode at a time, in one run.

The model is the tiny Llama of ``examples/models/tiny-llama`` (random init, seed 0) with the
bundled tokenizer, or ``--model DIR`` (an HF directory with its tokenizer). Both settings run
the same questions (``examples/math_react/questions_test.jsonl``) with the same loop and greedy
decoding through :func:`natscale.eval.run.run_eval`; one untimed warm-up episode runs first.
Reported per setting: episodes/s and generated tokens/s (from the summary), and the ratio.

A random model rarely ends its turn, so most turns run to ``--max-new-tokens`` and the episode
ends as ``unparseable_action`` after one turn: the benchmark measures generation throughput.

    python benchmarks/eval/bench_eval_hf.py --questions 64 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.env import machine  # noqa: E402


def build_tiny(out: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from eval.conftest import build_tiny_model

    return build_tiny_model(out)


def run(model: Path, out: Path, *, batch: int, questions: int, max_new: int, device: str) -> dict:
    from natscale.config.eval import EvalConfig
    from natscale.eval.run import run_eval

    cfg = EvalConfig.model_validate(
        {
            "backend": "hf",
            "model": str(model),
            "output": str(out),
            "questions": [str(REPO / "examples/math_react/questions_test.jsonl")],
            "limit": questions,
            "prompt": {"file": str(REPO / "examples/math_react/prompt.json"), "template": "llama2"},
            "loop": {"max_new_tokens": max_new},
            "hf": {"batch_size": batch, "device": device, "dtype": "auto"},
            "bootstrap": 0,
        }
    )
    return run_eval(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="HF model directory (default: tiny random)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label", default="vm")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory(prefix="natscale_bench_eval_") as tmp:
        work = Path(tmp)
        model = args.model or build_tiny(work / "model")
        run(model, work / "warmup", batch=1, questions=1, max_new=8, device=args.device)
        rows = {}
        for name, batch in (("one_at_a_time", 1), ("batched", args.batch)):
            s = run(
                model,
                work / name,
                batch=batch,
                questions=args.questions,
                max_new=args.max_new_tokens,
                device=args.device,
            )
            tp = s["throughput"]
            rows[name] = {
                "batch_size": batch,
                "episodes": s["episodes"],
                "elapsed_s": tp["elapsed_s"],
                "episodes_per_s": tp["episodes_per_s"],
                "generated_tokens": tp["generated_tokens"],
                "generated_tokens_per_s": tp["generated_tokens_per_s"],
                "failures": s["failures"],
            }
            print(
                f"{name:14s} batch {batch:3d}: {tp['episodes_per_s']:8.3f} episodes/s, "
                f"{tp['generated_tokens_per_s']:9.1f} tokens/s ({tp['elapsed_s']:.1f} s)"
            )
    speedup = rows["batched"]["episodes_per_s"] / rows["one_at_a_time"]["episodes_per_s"]
    print(f"batched / one-at-a-time: {speedup:.2f}x episodes/s")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "benchmark": "eval_hf_batched_vs_single",
        "model": str(args.model or "examples/models/tiny-llama (random init, seed 0)"),
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "device": args.device,
        "rows": rows,
        "speedup_episodes_per_s": round(speedup, 3),
        "host": machine(),
        "command": "python benchmarks/eval/bench_eval_hf.py " + " ".join(sys.argv[1:]),
        "utc": stamp,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"eval_hf_{args.label}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# eval hf backend: batched vs one episode at a time ({args.label}, {stamp})",
        "",
        f"Model: {result['model']}; {args.questions} questions of questions_test.jsonl; greedy; "
        f"max_new_tokens {args.max_new_tokens}; device {args.device}; "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}.",
        "",
        "| setting | batch | episodes/s | generated tokens/s | elapsed s |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['batch_size']} | {r['episodes_per_s']} | "
            f"{r['generated_tokens_per_s']} | {r['elapsed_s']} |"
        )
    lines += ["", f"Speedup (episodes/s): **{speedup:.2f}x**", "", f"`{result['command']}`", ""]
    base.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {base}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
