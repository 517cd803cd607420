"""First-run GPU check of natscale's CUDA segment loss: correctness at production shapes, then speed.

    python benchmarks/gpu_check_op.py --out $OUT/check_op.json         # GPU machine (~1-2 min)
    python benchmarks/gpu_check_op.py --device cpu --small --out x.json  # its logic, on a CPU

Step 2 of benchmarks/gpu_session.sh. Per case: natscale forward + backward (backward scaled by
0.37, so the autograd scaling is exercised) against (i) an fp32 reference (chunked, autograd, TF32
off) and (ii) the same-dtype materialised torch computation where it fits; rel = ||out - ref|| /
||ref||. Pass: finite, seg_count exact, and rel(ours) <= max(2 * rel(torch same dtype), floor) and
<= a per-dtype cap. Freed cache memory is filled with NaN before each run, so an output element
that is never written shows up. fp16 must be refused by the op with its reason (its gradients
would be formed before the loss scale), and ``auto`` must then run the reference and say so.
Then: bitwise determinism, no-grad / partial-grad semantics, torch.compile (inductor, fullgraph),
a CUDA-event timing at T=16384 H=4096 V=128256 against 3 GEMMs of the same shape + peak memory,
and torch's own chunked CE under torch.compile as a peer. Results are rewritten to the JSON after
every case (a timeout keeps what ran), with the implementation that ran and why.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import traceback

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from natscale.atomic import atomic_write_text
from natscale.ops import IGNORE_INDEX, segment_cross_entropy, segment_cross_entropy_materialized
from natscale.ops.segment_ce.dispatch import last_choice
from natscale.ops.segment_ce.reference import per_segment_sums

GSCALE = 0.37
CAPS = {  # rel-error caps per dtype: (loss / seg_nll, gradients)
    torch.bfloat16: (3e-3, 3e-2),
    torch.float32: (1e-5, 1e-4),
}
FLOOR = {torch.bfloat16: (1e-5, 1e-3), torch.float32: (1e-6, 1e-5)}


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def poison(dev, gib=8.0):
    """Fill freed cache memory with NaN: unwritten outputs then read as NaN."""
    if dev != "cuda":
        return
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info()[0]
    n = int(min(gib * 2**30, free * 0.8)) // 4
    t = torch.full((n,), float("nan"), device=dev)
    del t  # stays in the caching allocator, NaN-filled


def make(T, H, V, frac, dtype, dev, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(T, H, device=dev, generator=g).to(dtype)
    w = (torch.randn(V, H, device=dev, generator=g) * (3.0 / H**0.5)).to(dtype)
    y = torch.randint(0, V, (T,), device=dev, generator=g)
    seg = 512 if T >= 2048 else 32
    pos = torch.arange(T, device=dev) % seg
    y[pos < round((1.0 - frac) * seg)] = IGNORE_INDEX  # prompt-like masked runs
    tw = torch.rand(T, device=dev, generator=g) * 2.0
    cu = torch.arange(0, T + 1, seg, dtype=torch.int32, device=dev)
    if int(cu[-1]) != T:
        cu = torch.cat([cu, torch.tensor([T], dtype=torch.int32, device=dev)])
    return x, w, y, tw, cu


def run_native(args, x, w, y, tw, cu, impl, **kw):
    xh = x.detach().clone().requires_grad_()
    wh = w.detach().clone().requires_grad_()
    dev = x.device.type
    poison(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    loss, seg_nll, seg_count = segment_cross_entropy(xh, wh, y, tw, cu, impl=impl, **kw)
    (loss * GSCALE).backward()
    sync(dev)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev == "cuda" else None
    return dict(loss=loss.detach(), seg_nll=seg_nll, seg_count=seg_count, dX=xh.grad,
                dW=wh.grad, peak_mb=peak)  # fmt: skip


def run_reference(x, w, y, tw, cu, chunk=1024):
    """fp32 reference (TF32 off), chunked over tokens; dW accumulates in fp32 through autograd."""
    w32 = w.detach().float().requires_grad_()
    T = x.shape[0]
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    dX = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    nll_T = torch.zeros(T, dtype=torch.float32, device=x.device)
    trained = y != IGNORE_INDEX
    for s in range(0, T, chunk):
        xc = x[s : s + chunk].detach().float().requires_grad_()
        nll = F.cross_entropy(xc @ w32.t(), y[s : s + chunk], ignore_index=IGNORE_INDEX,
                              reduction="none")  # fmt: skip
        wt = torch.where(trained[s : s + chunk], tw[s : s + chunk], 0.0)
        part = (wt * nll).sum()
        (part * GSCALE).backward()
        loss += part.detach().double()
        dX[s : s + chunk] = xc.grad
        nll_T[s : s + chunk] = nll.detach()
    dW = w32.grad if w32.grad is not None else torch.zeros_like(w32)
    seg_nll, seg_count = per_segment_sums(nll_T, trained, cu)
    return dict(loss=loss.float(), seg_nll=seg_nll, seg_count=seg_count, dX=dX, dW=dW)


def run_materialized(x, w, y, tw, cu):
    xm = x.detach().clone().requires_grad_()
    wm = w.detach().clone().requires_grad_()
    loss, seg_nll, seg_count = segment_cross_entropy_materialized(xm, wm, y, tw, cu)
    (loss * GSCALE).backward()
    return dict(loss=loss.detach(), seg_nll=seg_nll, seg_count=seg_count, dX=xm.grad, dW=wm.grad)


def rel(a, b):
    if a is None or b is None:
        return None
    if a.numel() == 0 and b.numel() == 0:
        return 0.0
    num = torch.linalg.vector_norm((a.float() - b.float()).flatten()).item()
    den = torch.linalg.vector_norm(b.float().flatten()).item()
    return num / den if den > 0 else num


def finite(t):
    return t is None or bool(torch.isfinite(t.float()).all())


def compare(ours, ref, same, dtype):
    cap_l, cap_g = CAPS[dtype]
    fl_l, fl_g = FLOOR[dtype]
    out, ok = {}, True
    for q in ("loss", "seg_nll", "dX", "dW"):
        r_o = rel(ours[q], ref[q])
        r_t = rel(same[q], ref[q]) if same else None
        cap, fl = (cap_l, fl_l) if q in ("loss", "seg_nll") else (cap_g, fl_g)
        good = finite(ours[q]) and r_o is not None and r_o <= cap
        if r_t is not None and math.isfinite(r_t):
            good = good and r_o <= max(2 * r_t, fl)
        out[q] = {"rel": r_o, "rel_torch_same_dtype": r_t, "ok": good}
        ok &= good
    cnt = torch.equal(ours["seg_count"].cpu(), ref["seg_count"].cpu())
    out["seg_count_exact"] = cnt
    out["dtypes_ok"] = ours["dX"].dtype == dtype and ours["dW"].dtype == dtype
    return ok and cnt and out["dtypes_ok"], out


def check_case(args, name, T, H, V, frac, dtype, hint=True, chunk=None, peer=True):
    dev = args.device
    x, w, y, tw, cu = make(T, H, V, frac, dtype, dev, seed=len(name))
    n = int((y != IGNORE_INDEX).sum())
    kw = {"chunk_size": chunk}
    if hint:
        kw["num_trained"] = n
    t0 = time.perf_counter()
    ours = run_native(args, x, w, y, tw, cu, args.impl, **kw)
    t_ours = time.perf_counter() - t0
    ref = run_reference(x, w, y, tw, cu)
    same = run_materialized(x, w, y, tw, cu) if peer else None
    ok, detail = compare(ours, ref, same, dtype)
    if n == 0:  # all untrained: exactly zero, never NaN
        zero = all(float(ours[q].abs().max()) == 0.0 for q in ("dX", "dW") if ours[q].numel())
        zero &= float(ours["loss"]) == 0.0
        detail["all_untrained_exact_zero"] = zero
        ok = zero and detail["seg_count_exact"]
    return ok, dict(T=T, H=H, V=V, frac=frac, dtype=str(dtype), hint=hint, chunk=chunk,
                    T_trained=n, peak_mb=ours["peak_mb"], first_call_s=t_ours, **detail)  # fmt: skip


def check_fp16_refused(args):
    """The native op refuses fp16 with the reason; auto then runs the reference, recorded."""
    import warnings

    x, w, y, tw, cu = make(256, 64, 1000, 0.7, torch.float16, args.device, seed=5)
    res = {}
    try:
        segment_cross_entropy(x, w, y, tw, cu, impl=args.impl)
        res["native_refused"] = False
    except ValueError as exc:
        res["native_refused"] = "float16 is not supported" in str(exc)
        res["message"] = str(exc).splitlines()[0][:300]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = segment_cross_entropy(x, w, y, tw, cu, impl="auto")[0]
    res["auto_ran"] = last_choice().get(args.device)
    res["auto_is_reference"] = (res["auto_ran"] or {}).get("impl") == "reference"
    res["auto_warned_on_cuda"] = any("falls back" in str(c.message) for c in caught)
    res["auto_loss_finite"] = bool(torch.isfinite(loss))
    ok = res["native_refused"] and res["auto_is_reference"] and res["auto_loss_finite"]
    if args.device == "cuda":
        ok = ok and res["auto_warned_on_cuda"]
    return ok, res


def check_determinism(args):
    x, w, y, tw, cu = make(*args.prod, 1.0, torch.bfloat16, args.device, seed=7)
    n = int((y != IGNORE_INDEX).sum())
    a = run_native(args, x, w, y, tw, cu, args.impl, num_trained=n)
    b = run_native(args, x, w, y, tw, cu, args.impl, num_trained=n)
    same = {q: bool(torch.equal(a[q], b[q])) for q in ("loss", "seg_nll", "seg_count", "dX", "dW")}
    return all(same.values()), same


def check_api(args):
    dev, impl = args.device, args.impl
    x, w, y, tw, cu = make(700, 256, 32000, 0.6, torch.bfloat16, dev, seed=3)
    n = int((y != IGNORE_INDEX).sum())
    full = run_native(args, x, w, y, tw, cu, impl, num_trained=n)
    res = {}
    with torch.no_grad():
        l0 = segment_cross_entropy(x, w, y, tw, cu, num_trained=n, impl=impl)[0]
    res["no_grad_loss_equal"] = bool(torch.equal(l0, full["loss"]))
    xh = x.clone().requires_grad_()
    l1 = segment_cross_entropy(xh, w, y, tw, cu, num_trained=n, impl=impl)[0]
    (l1 * GSCALE).backward()
    res["hidden_only_grad_equal"] = bool(torch.equal(xh.grad, full["dX"]))
    wh = w.clone().requires_grad_()
    l2 = segment_cross_entropy(x, wh, y, tw, cu, num_trained=n, impl=impl)[0]
    (l2 * GSCALE).backward()
    res["weight_only_grad_equal"] = bool(torch.equal(wh.grad, full["dW"]))
    xh2 = x.clone().requires_grad_()
    xh2.grad = full["dX"].clone()  # accumulates into an existing .grad: exactly 2 dX
    (segment_cross_entropy(xh2, w, y, tw, cu, num_trained=n, impl=impl)[0] * GSCALE).backward()
    res["accumulates_into_grad"] = bool(torch.equal(xh2.grad, 2 * full["dX"]))
    res["no_hint_loss_close"] = (
        rel(segment_cross_entropy(x, w, y, tw, cu, impl=impl)[0], full["loss"]) < 1e-5
    )
    return all(res.values()), res


def check_compile(args):
    dev, impl = args.device, args.impl
    x, w, y, tw, cu = make(512, 256, 32000, 0.7, torch.bfloat16, dev, seed=4)
    n = int((y != IGNORE_INDEX).sum())

    def step(h, wt):
        loss, seg_nll, _ = segment_cross_entropy(h, wt, y, tw, cu, num_trained=n, impl=impl)
        return loss * GSCALE + seg_nll.sum() * 0.0

    backend = "inductor" if dev == "cuda" else "aot_eager"
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    outs = []
    for fn in (compiled, step):
        h = x.clone().requires_grad_()
        wt = w.clone().requires_grad_()
        fn(h, wt).backward()
        outs.append((h.grad, wt.grad))
    res = {"backend": backend, "dX_equal": bool(torch.equal(outs[0][0], outs[1][0])),
           "dW_equal": bool(torch.equal(outs[0][1], outs[1][1]))}  # fmt: skip
    return res["dX_equal"] and res["dW_equal"], res


def time_ms(fn, dev, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts)


def check_timing(args):
    dev, impl = args.device, args.impl
    T, H, V = args.prod
    rows = {}
    for frac in (1.0, 0.5):
        x, w, y, tw, cu = make(T, H, V, frac, torch.bfloat16, dev, seed=11)
        n = int((y != IGNORE_INDEX).sum())
        xh, wh = x.clone().requires_grad_(), w.clone().requires_grad_()
        for label, kw in (("hint", {"num_trained": n}), ("nohint", {})):

            def step(kw=kw, xh=xh, wh=wh, y=y, tw=tw, cu=cu):
                xh.grad = wh.grad = None
                segment_cross_entropy(xh, wh, y, tw, cu, impl=impl, **kw)[0].backward()

            med, best = time_ms(step, dev)
            if dev == "cuda":
                xh.grad = wh.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                peak = None
            rows[f"frac{frac}_{label}"] = {
                "ms": med, "min_ms": best, "peak_mb": peak, "T_trained": n
            }  # fmt: skip
        a = torch.randn(n, H, device=dev, dtype=torch.bfloat16)

        def floor(a=a, w=w):
            for _ in range(3):
                torch.mm(a, w.t())

        rows[f"frac{frac}_matmul_floor"] = {"ms": time_ms(floor, dev)[0], "T_trained": n}
        for label in ("hint", "nohint"):
            r = rows[f"frac{frac}_{label}"]
            r["x_matmul"] = r["ms"] / rows[f"frac{frac}_matmul_floor"]["ms"]
            r["eff_tflops"] = 6 * n * H * V / (r["ms"] * 1e-3) / 1e12
        del x, w, xh, wh, a
    return True, rows


def check_chunked_peer(args):
    """torch's own chunked CE: torch.compile'd per-chunk lm_head + CE under checkpoint (the
    forward GEMM is recomputed in backward), chunks of 4096 tokens; same loss semantics."""
    dev = args.device
    T, H, V = args.prod
    x, w, y, tw, cu = make(T, H, V, 1.0, torch.bfloat16, dev, seed=11)
    n = int((y != IGNORE_INDEX).sum())
    backend = "inductor" if dev == "cuda" else "aot_eager"

    @torch.compile(backend=backend, dynamic=False)
    def chunk_loss(x_c, w_, y_c, tw_c):
        nll = F.cross_entropy((x_c @ w_.t()).float(), y_c, ignore_index=IGNORE_INDEX,
                              reduction="none")  # fmt: skip
        return (torch.where(y_c != IGNORE_INDEX, tw_c, 0.0) * nll).sum()

    chunk = 4096 if T >= 4096 else 64
    xh, wh = x.clone().requires_grad_(), w.clone().requires_grad_()

    def step():
        xh.grad = wh.grad = None
        total = 0.0
        for s in range(0, T, chunk):
            total = total + torch.utils.checkpoint.checkpoint(
                chunk_loss, xh[s : s + chunk], wh, y[s : s + chunk], tw[s : s + chunk],
                use_reentrant=False)  # fmt: skip
        total.backward()
        return total

    t0 = time.perf_counter()
    loss = step()
    compile_s = time.perf_counter() - t0
    med, best = time_ms(step, dev)
    ours = segment_cross_entropy(x, w, y, tw, cu, num_trained=n, impl=args.impl)[0]
    peak = None
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    res = {"ms": med, "min_ms": best, "peak_mb": peak, "first_call_s": compile_s,
           "loss_rel_vs_natscale": rel(loss.detach(), ours), "T_trained": n,
           "eff_tflops": 6 * n * H * V / (med * 1e-3) / 1e12}  # fmt: skip
    return res["loss_rel_vs_natscale"] < 1e-3, res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="small shapes (CPU logic check)")
    p.add_argument("--out", required=True)
    p.add_argument("--skip", nargs="*", default=[])
    args = p.parse_args()
    args.impl = args.device
    dev = args.device
    args.prod = (16384, 4096, 128256) if not args.small else (256, 64, 4000)
    bf, fp32 = torch.bfloat16, torch.float32
    T, H, V = args.prod
    big = not args.small
    cases = [  # name, T, H, V, frac, dtype, kwargs -- most important first
        ("prod_all_trained_hint", T, H, V, 1.0, bf, {}),
        ("prod_half_trained_hint", T, H, V, 0.5, bf, {}),
        ("prod_half_trained_nohint", T, H, V, 0.5, bf, {"hint": False}),
        # 16896 x 128256 = 2.167e9 logits in one chunk: past int32 indexing
        ("one_chunk_over_2^31_elements", 16896 if big else T, 1024 if big else 32, V, 1.0, bf,
         {"chunk": 16896 if big else T, "peer": False}),
        ("qwen_vocab_odd_T", 4099 if big else 99, 2048 if big else 64, 151936 if big else 3001,
         0.7, bf, {"hint": False}),
        ("scalar_path_V32001_H1000", 3000 if big else 90, 1000 if big else 40,
         32001 if big else 1001, 0.7, bf, {}),
        ("all_untrained_hint", 2048 if big else 64, 512 if big else 32, V, 0.0, bf, {}),
        ("all_untrained_nohint", 2048 if big else 64, 512 if big else 32, V, 0.0, bf,
         {"hint": False}),
        ("T0", 0, 256, 32000, 1.0, bf, {}),
        ("fp32", 1024 if big else 64, 512 if big else 32, 50000 if big else 1000, 0.7, fp32, {}),
    ]  # fmt: skip
    report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "impl": args.impl,
              "results": {}}  # fmt: skip
    results = report["results"]

    def record(name, fn):
        if name in args.skip:
            return
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as exc:  # keep going; a CUDA fault ends the run below
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"[:2000],
                                 "trace": traceback.format_exc()[-3000:]}  # fmt: skip
        detail["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = {"ok": ok, **detail}
        report["ran"] = last_choice()  # which implementation ran, and why
        print(f"{'PASS' if ok else 'FAIL'} {name} ({detail['seconds']} s): "
              + json.dumps({k: v for k, v in detail.items() if k != "trace"}, default=str)[:600],
              flush=True)  # fmt: skip
        atomic_write_text(args.out, json.dumps(report, indent=1, default=str))
        if dev == "cuda":
            torch.cuda.empty_cache()
        err = detail.get("error", "")
        if "CUDA error" in err or "illegal" in err or "device-side assert" in err:
            raise SystemExit(f"stopping: the CUDA context is unusable after {name}")

    for name, t, h, v, frac, dt, kw in cases:
        record(name, lambda t=t, h=h, v=v, frac=frac, dt=dt, kw=kw, name=name: check_case(
            args, name, t, h, v, frac, dt, **kw))  # fmt: skip
    record("fp16_refused_auto_reference", lambda: check_fp16_refused(args))
    record("deterministic", lambda: check_determinism(args))
    record("api_semantics", lambda: check_api(args))
    record("timing_T16384_H4096_V128256", lambda: check_timing(args))
    record("torch_compile_fullgraph", lambda: check_compile(args))
    record("peer_torch_compiled_chunked_ce", lambda: check_chunked_peer(args))
    passed = sum(r["ok"] for r in results.values())
    print(f"gpu_check_op: {passed}/{len(results)} passed on {report['device']}; ran "
          f"{json.dumps(last_choice())}")  # fmt: skip
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
