"""Benchmark of the fused segment loss against materialised logits + F.cross_entropy.

    python benchmarks/kernels/bench_segment_ce.py                 # CUDA: the issue's shapes
    python benchmarks/kernels/bench_segment_ce.py --device cpu    # CPU: T=4096, H=256, V=32000

Per shape and implementation: forward, backward and total time (median over --repeats after
--warmup; total also p20-p80) and the peak memory of one forward + backward. Derived figures, with
their formulas (printed with the table too):
  eff TFLOP/s = 6 * T_trained * H * V / total time     (useful FLOPs: logits, dX, dW GEMMs)
  min ms      = fastest repeat (on a shared machine, the least disturbed one)
  x matmul    = total time / time of 3 GEMMs [T_trained, H] x [H, V] in the run's dtype, timed in
                the same run (the compute floor of a kernel that does only the useful FLOPs)
  peak MB     = peak memory during forward + backward minus the memory held before it (the inputs);
                the gradients of hidden and weight are included. CUDA: max_memory_allocated;
                CPU: VmHWM - VmRSS (peak resident set reset through /proc/self/clear_refs).
natscale computes the gradients in its forward (backward only scales them), so compare totals.
Every implementation's loss is checked against torch's (materialised logits + F.cross_entropy) on
the first measured repeat: loss_rel = |loss - torch| / |torch|, a FAIL above 1e-2 (16-bit) or 1e-4.
Peers: torch (eager), torch.compile (whole loss), torch.compile-chunked (torch's own chunked CE:
a compiled lm_head + CE per 4096-token chunk under activation checkpointing), liger (its fused
linear CE, dW accumulated in the weight dtype) and liger-fp32acc (accumulated in fp32, as natscale).
Results (JSON and a Markdown table) go to benchmarks/results/ with the device, versions, command and
the natscale implementation that ran (and why); they are rewritten after every case, so a run cut
short keeps what it measured.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from natscale.atomic import atomic_write_text
from natscale.env import machine
from natscale.ops import (
    IGNORE_INDEX,
    segment_cross_entropy,
    segment_cross_entropy_materialized,
    segment_cross_entropy_reference,
)
from natscale.ops.segment_ce.dispatch import last_choice

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {
    "cuda": dict(
        tokens=[4096, 16384],
        hidden=4096,
        vocab=[128256, 151936],
        dtype="bfloat16",
        impls=[
            "natscale",
            "natscale-nohint",
            "torch",
            "torch.compile",
            "torch.compile-chunked",
            "liger",
            "liger-fp32acc",
        ],
    ),
    "cpu": dict(
        tokens=[4096],
        hidden=256,
        vocab=[32000],
        dtype="float32",
        impls=["natscale", "reference", "torch"],
    ),
}


@dataclass
class Case:
    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    token_weight: torch.Tensor
    cu_seqlens: torch.Tensor
    num_trained: int

    def zero_grad(self) -> None:
        self.hidden.grad = None
        self.weight.grad = None


def make_case(tokens: int, hidden: int, vocab: int, fraction: float, dtype, device) -> Case:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * (3.0 / hidden**0.5)
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    # Masked tokens come in prompt-like runs: the first (1 - fraction) of every 512-token segment.
    seg = 512
    pos = torch.arange(tokens) % seg
    targets[pos < round((1.0 - fraction) * seg)] = IGNORE_INDEX
    cu = torch.arange(0, tokens + 1, seg, dtype=torch.int32)
    if int(cu[-1]) != tokens:
        cu = torch.cat([cu, torch.tensor([tokens], dtype=torch.int32)])
    return Case(
        x.to(device=device, dtype=dtype).requires_grad_(),
        w.to(device=device, dtype=dtype).requires_grad_(),
        targets.to(device),
        torch.ones(tokens, device=device),
        cu.to(device),
        int((targets != IGNORE_INDEX).sum()),
    )


def implementations(
    device: str, chunk_size: int | None
) -> dict[str, Callable[[Case], torch.Tensor]]:
    def natscale(c: Case) -> torch.Tensor:
        return segment_cross_entropy(
            c.hidden, c.weight, c.targets, c.token_weight, c.cu_seqlens,
            num_trained=c.num_trained, chunk_size=chunk_size, impl=device,
        )[0]  # fmt: skip

    def natscale_nohint(c: Case) -> torch.Tensor:
        return segment_cross_entropy(
            c.hidden, c.weight, c.targets, c.token_weight, c.cu_seqlens,
            chunk_size=chunk_size, impl=device,
        )[0]  # fmt: skip

    def reference(c: Case) -> torch.Tensor:
        return segment_cross_entropy_reference(
            c.hidden, c.weight, c.targets, c.token_weight, c.cu_seqlens
        )[0]

    def materialized(c: Case) -> torch.Tensor:
        return segment_cross_entropy_materialized(
            c.hidden, c.weight, c.targets, c.token_weight, c.cu_seqlens
        )[0]

    compiled = torch.compile(segment_cross_entropy_materialized, dynamic=False)

    def torch_compile(c: Case) -> torch.Tensor:
        return compiled(c.hidden, c.weight, c.targets, c.token_weight, c.cu_seqlens)[0]

    impls = {
        "natscale": natscale,
        "natscale-nohint": natscale_nohint,
        "reference": reference,
        "torch": materialized,
        "torch.compile": torch_compile,
        "torch.compile-chunked": chunked_compiled_ce(device),
    }
    impls.update(liger_impls())
    return impls


def chunked_compiled_ce(device: str, chunk: int = 4096) -> Callable[[Case], torch.Tensor]:
    """torch's own answer to the [T, V] logits: a torch.compile'd lm_head + CE per chunk of tokens
    under activation checkpointing (the chunk's GEMM is recomputed in backward)."""
    backend = "inductor" if device == "cuda" else "aot_eager"

    @torch.compile(backend=backend, dynamic=False)
    def chunk_loss(x_c, weight, y_c, w_c):
        nll = F.cross_entropy((x_c @ weight.t()).float(), y_c, ignore_index=IGNORE_INDEX,
                              reduction="none")  # fmt: skip
        return (torch.where(y_c != IGNORE_INDEX, w_c, 0.0) * nll).sum()

    def run(c: Case) -> torch.Tensor:
        total = c.hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, c.hidden.shape[0], chunk):
            part = slice(s, s + chunk)
            total = total + torch.utils.checkpoint.checkpoint(
                chunk_loss, c.hidden[part], c.weight, c.targets[part], c.token_weight[part],
                use_reentrant=False,
            )  # fmt: skip
        return total

    return run


def liger_impls() -> dict[str, Callable[[Case], torch.Tensor]]:
    """Liger's fused linear CE (no token weights: the cases use weight 1), with dW accumulated in
    the weight dtype (its default) and in fp32. Any failure to import or construct it (no Triton,
    no GPU, an API change) leaves it out, with the reason printed."""
    out: dict[str, Callable[[Case], torch.Tensor]] = {}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception as exc:  # liger imports Triton and probes the GPU at import
        print(f"bench_segment_ce: liger not available ({type(exc).__name__}: {exc})"[:300])
        return out
    variants = {"liger": {}, "liger-fp32acc": {"accum_dtype": torch.float32}}
    for name, kwargs in variants.items():
        try:
            loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", **kwargs)
        except Exception as exc:
            print(f"bench_segment_ce: {name} not available ({type(exc).__name__}: {exc})"[:300])
            continue
        out[name] = lambda c, loss=loss: loss(c.weight, c.hidden, c.targets)
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_ms(fn, case: Case, device: str) -> tuple[float, float, torch.Tensor]:
    """One forward + backward: (forward ms, backward ms, the loss)."""
    case.zero_grad()
    _sync(device)
    t0 = time.perf_counter()
    loss = fn(case)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    case.zero_grad()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, loss.detach()


def loss_tolerance(dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-2


def summarize(fwd: list[float], bwd: list[float]) -> dict[str, float]:
    total = sorted(f + b for f, b in zip(fwd, bwd, strict=True))
    q = statistics.quantiles(total, n=5, method="inclusive") if len(total) >= 2 else [total[0]] * 4
    return {
        "fwd_ms": statistics.median(fwd),
        "bwd_ms": statistics.median(bwd),
        "total_ms": statistics.median(total),
        "total_min_ms": total[0],
        "total_p20_ms": q[0],
        "total_p80_ms": q[3],
        "total_samples_ms": [f + b for f, b in zip(fwd, bwd, strict=True)],
    }


def measure_case(
    impls: dict, floor: Callable[[], float], case: Case, device: str, args: argparse.Namespace
) -> tuple[dict, float]:
    """Timings and peak memory per implementation (or an error string), and the matmul floor.

    Repeats go round-robin over the implementations and the floor, so load from other processes
    (a shared CPU) spreads over all of them instead of hitting one.
    """
    errors: dict[str, str] = {}
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in impls}
    losses: dict[str, float] = {}

    def attempt(name: str, record: bool) -> None:
        try:
            fwd, bwd, loss = step_ms(impls[name], case, device)
        except torch.OutOfMemoryError:
            errors[name] = "OOM"
            case.zero_grad()
            if device == "cuda":
                torch.cuda.empty_cache()
            return
        except Exception as exc:  # one broken peer must not cost the others
            errors[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            case.zero_grad()
            return
        if record:
            samples[name][0].append(fwd)
            samples[name][1].append(bwd)
            losses.setdefault(name, float(loss))  # the first measured repeat

    floor_ms = []
    for name in impls:
        for _ in range(args.warmup):
            if name not in errors:
                attempt(name, record=False)
    floor()
    for _ in range(args.repeats):
        for name in impls:
            if name not in errors:
                attempt(name, record=True)
        floor_ms.append(floor())
    want = torch_loss(case)
    results = {}
    for name in impls:
        if name in errors:
            results[name] = errors[name]
            continue
        results[name] = summarize(*samples[name])
        results[name]["loss"] = losses[name]
        if want is not None:
            rel = abs(losses[name] - want) / max(abs(want), 1e-30)
            results[name]["loss_rel_vs_torch"] = rel
            results[name]["loss_check"] = (
                "ok" if rel <= loss_tolerance(case.hidden.dtype) else "FAIL"
            )
        try:
            results[name]["peak_mb"] = peak_memory_mb(impls[name], case, device)
        except torch.OutOfMemoryError:
            results[name] = "OOM"
        case.zero_grad()
        if device == "cuda":
            torch.cuda.empty_cache()
    return results, statistics.median(floor_ms)


def torch_loss(case: Case) -> float | None:
    """torch's loss for the case (materialised logits + F.cross_entropy), or None on OOM."""
    try:
        with torch.no_grad():
            return float(
                segment_cross_entropy_materialized(
                    case.hidden, case.weight, case.targets, case.token_weight, case.cu_seqlens
                )[0]
            )
    except torch.OutOfMemoryError:
        if case.hidden.is_cuda:
            torch.cuda.empty_cache()
        return None


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn, case: Case, device: str) -> float:
    case.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(case).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS starts low
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    fn(case).backward()
    return (_rss_kb("VmHWM") - base) / 1024


def matmul_floor(num_rows: int, hidden: int, vocab: int, dtype, device) -> Callable[[], float]:
    """A timer of 3 GEMMs [num_rows, H] x [H, V] (6 * num_rows * H * V FLOPs); returns ms."""
    a = torch.randn(num_rows, hidden, device=device, dtype=dtype)
    b = torch.randn(vocab, hidden, device=device, dtype=dtype)

    def run_once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b.t())
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    return run_once


def environment(device: str) -> dict:
    from natscale.ops import report

    env = machine(("liger-kernel",))
    if device == "cpu":  # the machine may have a GPU this run does not use
        env["device"] = f"{env['cpu']} ({env['cpu_count']} cores)"
    return {
        **env,
        "ops": report(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def run(args: argparse.Namespace, save: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Measure every case; ``save(rows)`` after each one (a run cut short keeps its rows)."""
    device = args.device
    dtype = getattr(torch, args.dtype)
    impls = implementations(device, args.chunk_size)
    unknown = [name for name in args.impls if name not in impls and not name.startswith("liger")]
    if unknown:
        raise SystemExit(f"unknown --impls {unknown}; choose from {sorted(impls)}")
    rows = []
    for tokens in args.tokens:
        for vocab in args.vocab:
            for fraction in args.fractions:
                case = make_case(tokens, args.hidden, vocab, fraction, dtype, device)
                timer = matmul_floor(case.num_trained, args.hidden, vocab, dtype, device)
                flops = 6 * case.num_trained * args.hidden * vocab
                chosen = {name: impls[name] for name in args.impls if name in impls}
                results, floor = measure_case(chosen, timer, case, device, args)
                del timer
                for name in args.impls:
                    row = {"T": tokens, "H": args.hidden, "V": vocab, "fraction": fraction}
                    row.update(T_trained=case.num_trained, impl=name, dtype=args.dtype)
                    row["matmul_floor_ms"] = floor
                    result = results.get(name, "not importable")
                    if isinstance(result, str):
                        row["error"] = result
                    else:
                        row.update(result)
                        row["eff_tflops"] = flops / (row["total_ms"] * 1e-3) / 1e12
                        row["x_matmul"] = row["total_ms"] / floor
                    if name.startswith("natscale"):  # which implementation ran, and why
                        row["ran"] = last_choice().get(device)
                    rows.append(row)
                    print(format_row(row), flush=True)
                del case
                if save is not None:
                    save(rows)
    return rows


HEADER = (
    f"{'T':>6} {'V':>7} {'frac':>4} {'T_tr':>6} {'impl':<21} {'fwd ms':>9} {'bwd ms':>9} "
    f"{'total ms':>9} {'p20-p80':>17} {'min ms':>9} {'peak MB':>9} {'eff TFLOP/s':>11} "
    f"{'x matmul':>8}  loss vs torch"
)


def format_row(row: dict) -> str:
    head = (
        f"{row['T']:>6} {row['V']:>7} {row['fraction']:>4} {row['T_trained']:>6} {row['impl']:<21}"
    )
    if "error" in row:
        return f"{head} {row['error']}"
    spread = f"{row['total_p20_ms']:.1f}-{row['total_p80_ms']:.1f}"
    check = row.get("loss_check", "n/a")
    if "loss_rel_vs_torch" in row:
        check = f"{check} {row['loss_rel_vs_torch']:.1e}"
    return (
        f"{head} {row['fwd_ms']:>9.1f} {row['bwd_ms']:>9.1f} {row['total_ms']:>9.1f} "
        f"{spread:>17} {row['total_min_ms']:>9.1f} {row['peak_mb']:>9.0f} "
        f"{row['eff_tflops']:>11.4g} {row['x_matmul']:>8.2f}  {check}"
    )


def results_stem(env: dict, args: argparse.Namespace) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in env["device"].lower()).strip("-")
    return f"segment_ce_{args.device}_{slug[:40]}_{dt.datetime.now():%Y%m%d-%H%M%S}"


def write_results(
    out_dir: Path, env: dict, args: argparse.Namespace, rows: list[dict], stem: str
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**env, "ran": last_choice()}
    v = env["versions"]
    payload = {"environment": env, "args": vars(args), "formulas": __doc__, "rows": rows}
    md = [
        f"# Segment loss benchmark ({args.device})",
        "",
        f"- device: {env['device']}; torch {v['torch']} (CUDA {env['cuda']}); "
        f"liger-kernel {v['liger-kernel']}; natscale {env['git_commit'][:8]}",
        f"- command: `{env['command']}`",
        f"- date: {env['time_utc']}; torch threads {env['torch_threads']}; load average (1, 5, 15 "
        f"min) at start {env['load_average_1_5_15']}, at end {env['load_average_end']}",
        f"- dtype {args.dtype}; warmup {args.warmup}, repeats {args.repeats} (median; p20-p80)",
        f"- natscale ran: {json.dumps(env['ran'])}",
        "",
        "```",
        HEADER,
        *[format_row(r) for r in rows],
        "```",
        "",
        "total = median of forward + backward (p20-p80 spread; min = fastest repeat); "
        "eff TFLOP/s = 6 * T_trained * H * V / total time; x matmul = total / time of 3 GEMMs "
        "[T_trained, H] x [H, V] in the same dtype and run; peak MB = peak memory of forward + "
        "backward above the inputs (gradients included); loss vs torch = |loss - torch's| / "
        "|torch's| on the first measured repeat (FAIL above 1e-2 for 16-bit, 1e-4 for fp32).",
    ]
    for suffix, text in (
        (".json", json.dumps(payload, indent=2, default=str)),
        (".md", "\n".join(md) + "\n"),
    ):
        atomic_write_text(out_dir / f"{stem}{suffix}", text)
    return out_dir / f"{stem}.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tokens", type=int, nargs="+")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--vocab", type=int, nargs="+")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--impls", nargs="+")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU (use --device cpu)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.device)
    print(f"device: {env['device']}; torch {torch.__version__}; command: {env['command']}")
    print(HEADER)
    stem = results_stem(env, args)

    def save(rows: list[dict]) -> None:
        env["load_average_end"] = os.getloadavg()
        if not args.no_save:
            write_results(args.out_dir, env, args, rows, stem)

    rows = run(args, save)
    save(rows)
    if not args.no_save:
        print(f"results: {args.out_dir / stem}.md (+ .json)")
    done = [r for r in rows if "error" not in r]
    failed = [f"{r['impl']} T={r['T']} V={r['V']}" for r in done if r.get("loss_check") == "FAIL"]
    print(
        f"bench_segment_ce: {len(done)}/{len(rows)} measurements on {env['device']}; "
        f"loss vs torch: {'FAIL ' + ', '.join(failed) if failed else 'ok'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
