"""Aggregate the runs of ``natscale bench nat``: table, bar chart and JSON record.

Accuracy per (strategy, P) is the mean over seeds. Its 95% interval is the Student t interval
over the seeds' accuracies (what changes when the model is trained again), or with one seed the
eval's bootstrap interval over questions. Both are written down in every record.

Each strategy is also set against vanilla question by question (:func:`paired`): a test
question's score is its reward averaged over the seeds, and the difference gets a paired
bootstrap interval over the questions and the sign test (:mod:`natscale.eval.paired`). That
interval is about the test questions, for these trained models; the seed interval above is
about training again.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from natscale.bench.nat.behaviour import BEHAVIOURS
from natscale.bench.nat.data import ALL, BASE
from natscale.bench.nat.presets import Preset
from natscale.figures import save_png


def _positives(preset: Preset, results_or_rows: list[dict[str, Any]]) -> list[int]:
    """The P values present, in the preset's order (the base model first, the calibration's ALL
    last)."""
    have = {r["p"] for r in results_or_rows}
    return [p for p in (BASE, *preset.positives, ALL) if p in have]


# the protocol's calibration target (docs/nat-benchmark.md): vanilla on the study's successes
# lands inside this band, so that there is room to see both gains and losses
CALIBRATION_BAND = (0.40, 0.80)


def calibration_verdict(preset: Preset, rows: list[dict[str, Any]]) -> str | None:
    """What a calibration decides: vanilla's mean accuracy on the data that decide it (every
    success, or with ``calibration: positives`` the largest P) against the band; None when the
    rows hold no such run."""
    p = ALL if preset.calibration == "all" else max(preset.positives)
    row = next(
        (r for r in rows if (r["p"], r["strategy"], r["marker"]) == (p, "vanilla", "success")),
        None,
    )
    if row is None:
        return None
    lo, hi = CALIBRATION_BAND
    acc = row["accuracy"]
    where = "inside" if lo <= acc <= hi else ("below" if acc < lo else "above")
    return (
        f"vanilla at {p_label(p)}: {_pct(acc)}% over {len(row['per_seed'])} seed(s), {where} the "
        f"protocol's {lo:.0%}-{hi:.0%} band"
    )


def p_label(p: int) -> str:
    return {ALL: "P = all", BASE: "base model"}.get(p, f"P = {p:,}")


# two-sided 95% Student t quantiles by degrees of freedom (1-30)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile; past 30 degrees of freedom the Cornish-Fisher
    expansion around the normal's 1.96 (within 0.001 of the exact value)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: list[float], single_ci: list[float] | None = None) -> list[float] | None:
    """95% interval of the mean of ``values`` (t over seeds), or ``single_ci`` for one value."""
    if len(values) == 1:
        return single_ci
    mean = statistics.fmean(values)
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return [max(0.0, mean - half), min(1.0, mean + half)]


def aggregate(preset: Preset, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (P, strategy, marker): mean accuracy, interval and the per-seed values."""
    rows = []
    for p in _positives(preset, results):
        for strategy in preset.strategies:
            runs = sorted(
                (r for r in results if r["p"] == p and r["strategy"] == strategy),
                key=lambda r: r["seed"],
            )
            if not runs:
                continue
            for marker in ("success_marker", "failure_marker"):
                if marker not in runs[0]:
                    continue
                accs = [r[marker]["accuracy"] for r in runs]
                fin = [r[marker]["finished"] / r[marker]["episodes"] for r in runs]
                kinds = [r[marker].get("behaviour") for r in runs]
                rows.append(
                    {
                        "p": p,
                        "strategy": strategy,
                        "marker": runs[0][marker].get("marker", "success")
                        if marker == "failure_marker"
                        else "success",
                        "accuracy": statistics.fmean(accs),
                        "ci95": interval(accs, runs[0][marker].get("ci95")),
                        "per_seed": accs,
                        "seeds": [r["seed"] for r in runs],
                        "finished_rate": statistics.fmean(fin),
                        "episodes_per_seed": runs[0][marker]["episodes"],
                        "behaviour": _mean_behaviour(kinds),
                    }
                )
    return rows


def paired(preset: Preset, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per P, each strategy against vanilla on the test questions both evaluated in every seed
    (success marker); runs without per-question rewards (older results) are left out."""
    from natscale.eval.paired import paired_difference

    def scores(p: int, strategy: str) -> tuple[dict[str, tuple[str, float]], list[int]] | None:
        runs = [r for r in results if r["p"] == p and r["strategy"] == strategy]
        per_run = [r["success_marker"].get("rewards") for r in runs]
        if not runs or any(not x for x in per_run):
            return None
        shared = set.intersection(*(set(x) for x in per_run))
        mean = {q: ("", statistics.fmean(x[q] for x in per_run)) for q in shared}
        return mean, sorted(r["seed"] for r in runs)

    out = []
    for p in _positives(preset, results):
        base = scores(p, "vanilla")
        for strategy in preset.strategies:
            other = scores(p, strategy) if strategy != "vanilla" else None
            if base is None or other is None:
                continue
            d = paired_difference(base[0], other[0], names=("vanilla", strategy))
            out.append({"p": p, "strategy": strategy, "versus": "vanilla", "seeds": other[1], **d})
    return out


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "Against vanilla, question by question (each test question's reward averaged over the "
        "seeds; paired bootstrap 95% interval over the questions; exact sign test):",
        "",
        "| strategy | P | difference, points [95% CI] | better / worse questions | p |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["ci95"]
        ci_txt = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        lines.append(
            f"| {r['strategy']} | {p_label(r['p']).removeprefix('P = ')} | "
            f"**{100 * r['value']:+.1f}**{ci_txt} | {r['better']} / {r['worse']} of "
            f"{r['questions']} | {r['p_sign_test']:.2g} |"
        )
    return lines


def _mean_behaviour(per_run: list[dict[str, float] | None]) -> dict[str, float] | None:
    """The mean over runs of each behaviour's share (None if a run has none recorded)."""
    if not per_run or any(b is None for b in per_run):
        return None
    return {
        name: statistics.fmean(b.get(name, 0.0) for b in per_run)
        for name in BEHAVIOURS
        if any(name in b for b in per_run)
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(
    preset: Preset,
    rows: list[dict[str, Any]],
    header: str,
    pairs: list[dict[str, Any]] | None = None,
) -> str:
    """The accuracy table (success marker), each strategy against vanilla question by question
    (``pairs``, :func:`paired`) and the controllability table (failure markers)."""
    ps = _positives(preset, rows)
    lines = [header, "", "Test accuracy, % (95% interval; per seed), greedy, success marker:", ""]
    lines.append("| strategy | " + " | ".join(p_label(p) for p in ps) + " |")
    lines.append("|---" * (len(ps) + 1) + "|")
    for strategy in preset.strategies:
        cells = []
        for p in ps:
            row = next(
                (
                    r
                    for r in rows
                    if (r["p"], r["strategy"], r["marker"]) == (p, strategy, "success")
                ),
                None,
            )
            if row is None:
                cells.append("–")
                continue
            ci = row["ci95"]
            ci_txt = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
            seeds = ", ".join(_pct(a) for a in row["per_seed"])
            cells.append(f"**{_pct(row['accuracy'])}**{ci_txt} ({seeds})")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines += _paired_table(pairs or [])
    ctrl = [r for r in rows if r["marker"] != "success"]
    if ctrl:
        lines += ["", "Controllability: the same models with a failure marker in the question:", ""]
        lines.append(
            "| strategy | P | marker | accuracy % | finished % | success-marker accuracy % |"
        )
        lines.append("|---|---|---|---|---|---|")
        for r in ctrl:
            base = next(
                x
                for x in rows
                if (x["p"], x["strategy"], x["marker"]) == (r["p"], r["strategy"], "success")
            )
            lines.append(
                f"| {r['strategy']} | {p_label(r['p'])[4:]} | {r['marker']} | {_pct(r['accuracy'])} | "
                f"{_pct(r['finished_rate'])} | {_pct(base['accuracy'])} |"
            )
    lines += _behaviour_table(rows)
    return "\n".join(lines) + "\n"


def _behaviour_table(rows: list[dict[str, Any]]) -> list[str]:
    """What the agents do: % of the test episodes per behaviour (natscale.bench.nat.behaviour)."""
    rows = [r for r in rows if r.get("behaviour")]
    names = [n for n in BEHAVIOURS if any(n in r["behaviour"] for r in rows)]
    if not names:
        return []
    lines = [
        "",
        "What the agents do, % of the test episodes (mean over seeds; the behaviours are defined "
        "in `natscale/bench/nat/behaviour.py`):",
        "",
        "| strategy | P | marker | " + " | ".join(n.replace("_", " ") for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [_pct(r["behaviour"].get(n, 0.0)) for n in names]
        lines.append(
            f"| {r['strategy']} | {p_label(r['p']).removeprefix('P = ')} | {r['marker']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def wrap_title(title: str, width_in: float) -> str:
    """``title`` in lines that fit a figure ``width_in`` inches wide at font size 9 (about 13
    characters an inch)."""
    import textwrap

    return textwrap.fill(title, width=max(20, int(13 * width_in)))


def plot(preset: Preset, rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Grouped bars: accuracy per strategy at each P, with the 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = _positives(preset, rows)
    # the strategies with runs (the calibration has vanilla alone)
    strategies = [s for s in preset.strategies if any(r["strategy"] == s for r in rows)]
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(ps), 3.6))
    for k, strategy in enumerate(strategies):
        xs, ys, lo, hi = [], [], [], []
        for i, p in enumerate(ps):
            row = next(
                (
                    r
                    for r in rows
                    if (r["p"], r["strategy"], r["marker"]) == (p, strategy, "success")
                ),
                None,
            )
            if row is None:
                continue
            ci = row["ci95"] or [row["accuracy"], row["accuracy"]]
            xs.append(i + (k - (len(strategies) - 1) / 2) * width)
            ys.append(100 * row["accuracy"])
            lo.append(100 * (row["accuracy"] - ci[0]))
            hi.append(100 * (ci[1] - row["accuracy"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=strategy)
    ax.set_xticks(range(len(ps)), [p_label(p) for p in ps])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(wrap_title(title, fig.get_figwidth()), fontsize=9)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path, dpi=120)
    plt.close(fig)
    return path
