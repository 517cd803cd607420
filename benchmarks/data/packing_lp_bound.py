"""The Gilmore-Gomory LP lower bound on rows, by column generation (needs scipy, not a dependency).

    pip install --target /tmp/sp scipy && PYTHONPATH=/tmp/sp:. \\
        python benchmarks/data/packing_lp_bound.py --data gsm8k --max-seq-len 1024 --seed 0

The LP relaxation of bin packing over patterns (multisets of lengths that fit in a row) is a
lower bound at least as strong as L2 and usually within one row of the optimum. Column
generation: solve the master LP over the patterns so far (HiGHS), price a new pattern by a bounded
knapsack on the duals (dynamic programming over the capacity), stop when no pattern has reduced
cost below zero. ``ceil(LP - 1e-6)`` bounds the optimum; so does the Farley bound LP/price at
any iteration, printed as it goes. Evidence for docs/data.md's packing section: on the gsm8k
preset at max_seq_len 1024, rows <= 1.005 x L2 is not attainable (the LP bound is above it).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.bench.datasets import synthetic_lengths  # noqa: E402
from natscale.bench.presets import DATA_PRESETS  # noqa: E402
from natscale.data.packing_search import bfd_sizes, l2_bound  # noqa: E402


def price(w: np.ndarray, d: np.ndarray, pi: np.ndarray, cap: int) -> tuple[float, np.ndarray]:
    """Max sum(pi * a) over patterns a (a_j <= d_j, sum(w * a) <= cap), by binary splitting."""
    chunks = []
    for j in range(len(w)):
        m, k = min(int(d[j]), cap // int(w[j])), 1
        while m > 0:
            t = min(k, m)
            chunks.append((j, t))
            m, k = m - t, 2 * k
    dp = np.zeros(cap + 1)
    take = np.zeros((len(chunks), cap + 1), dtype=bool)
    for c, (j, t) in enumerate(chunks):
        size, value = int(w[j]) * t, pi[j] * t
        if size > cap or value <= 0:
            continue
        cand = np.full(cap + 1, -1.0)
        cand[size:] = dp[:-size] + value
        take[c] = cand > dp + 1e-12
        dp = np.where(take[c], cand, dp)
    room = int(dp.argmax())
    best, a = float(dp[room]), np.zeros(len(w), dtype=np.int64)
    for c in range(len(chunks) - 1, -1, -1):
        if take[c, room]:
            j, t = chunks[c]
            a[j] += t
            room -= int(w[j]) * t
    return best, a


def lp_bound(lengths: list[int], cap: int, seconds: float) -> tuple[float, float, bool]:
    """(LP value so far, best Farley bound, converged)."""
    from scipy.optimize import linprog

    w, d = np.unique(np.asarray(lengths), return_counts=True)
    where = {int(x): i for i, x in enumerate(w)}
    cols = set()
    for row in bfd_sizes(lengths, cap):  # a feasible start: the BFD rows, and one size per row
        a = np.zeros(len(w), dtype=np.int64)
        for x in row:
            a[where[x]] += 1
        cols.add(tuple(a))
    for j in range(len(w)):
        a = np.zeros(len(w), dtype=np.int64)
        a[j] = min(d[j], cap // w[j])
        cols.add(tuple(a))
    patterns = [np.array(c) for c in sorted(cols)]
    t0, farley, it = time.time(), 0.0, 0
    while True:
        A = np.stack(patterns, axis=1).astype(float)
        res = linprog(np.ones(A.shape[1]), A_ub=-A, b_ub=-d.astype(float), method="highs")
        z, pi = res.fun, -res.ineqlin.marginals
        best, a = price(w, d, pi, cap)
        farley = max(farley, z / best if best > 1 else z)
        it += 1
        if it % 50 == 0:
            print(
                f"  iteration {it}: LP {z:.4f}, price {best:.6f}, Farley {farley:.4f}", flush=True
            )
        if best <= 1 + 1e-9:
            return z, farley, True
        if time.time() - t0 > seconds:
            return z, farley, False
        patterns.append(a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="gsm8k", choices=["gsm8k", "hotpotqa"])
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--num", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=600)
    args = ap.parse_args()
    dist = DATA_PRESETS[args.data]
    assert dist is not None
    rng = np.random.default_rng(args.seed)
    lengths = synthetic_lengths(dist, num=args.num, seq_len=args.max_seq_len, rng=rng).tolist()
    l2 = l2_bound(lengths, args.max_seq_len)
    z, farley, done = lp_bound(lengths, args.max_seq_len, args.seconds)
    state = "optimal" if done else "not converged (the LP value is an upper estimate)"
    print(
        f"{args.data} max_seq_len {args.max_seq_len} seed {args.seed}: L2 {l2}, "
        f"1.005 x L2 = {1.005 * l2:.1f}; LP {z:.4f} ({state}); rows >= {math.ceil(farley - 1e-6)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
