"""The chart of ``natscale eval compare --plot``: each run's headline metric with its 95%
interval and, beside it, each run's paired difference with the first run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.figures import PNG_KEY, replaceable, save_png

WRITER = "eval compare"  # the PNG text chunk that marks a chart as this command's


def _label(run: str) -> str:
    parts = Path(run).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else run


def _errors(value: float, ci: Any) -> tuple[float, float]:
    if isinstance(ci, list) and len(ci) == 2:
        return max(0.0, value - ci[0]), max(0.0, ci[1] - value)
    return 0.0, 0.0


def plot_compare(
    runs: list[str],
    summaries: list[dict[str, Any]],
    paired: list[dict[str, Any] | None],
    path: str | Path,
) -> Path:
    """Write the chart to ``path`` (a PNG, complete or not at all); return the path. A file
    there that this command did not write is never replaced (ValueError)."""
    path = Path(path)
    if not replaceable(path, WRITER):
        raise ValueError(
            f"--plot {path} exists and natscale eval compare did not write it; move it, or "
            "give another path"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = next(iter(summaries[0]["metrics"]))
    labels = [_label(r) for r in runs]
    rows = range(len(runs))[::-1]  # the first run on top
    panels = 2 if any(p is not None for p in paired) else 1
    fig, axes = plt.subplots(
        1, panels, figsize=(5 * panels + 1, 0.5 * len(runs) + 1.6), sharey=True, squeeze=False
    )
    ax = axes[0][0]
    for y, s in zip(rows, summaries, strict=True):
        m = s["metrics"].get(headline)
        if m is None:
            continue
        value = 100 * m["value"]
        lo, hi = _errors(m["value"], m.get("ci95"))
        ax.barh(y, value, color="#4c72b0", xerr=[[100 * lo], [100 * hi]], capsize=3)
        ax.text(value + 100 * hi + 1, y, f"{value:.1f}", va="center", fontsize=8)
    ax.set_yticks(list(rows), labels)
    ax.set_xlabel(f"{headline}, % (95% CI)")
    ax.set_xlim(0, 112)
    if panels == 2:
        ax = axes[0][1]
        ax.axvline(0, color="black", linewidth=0.8)
        reach = 5.0
        for k, (y, p) in enumerate(zip(rows, paired, strict=True)):
            if p is None or p["value"] is None:
                ax.text(0, y, " baseline" if k == 0 else " n/a", va="center", fontsize=8)
                continue
            value = 100 * p["value"]
            lo, hi = _errors(p["value"], p["ci95"])
            color = "#55a868" if value >= 0 else "#c44e52"
            ax.barh(y, value, color=color, xerr=[[100 * lo], [100 * hi]], capsize=3)
            end = value + 100 * hi
            ax.text(end + 1, y, f"{value:+.1f} (p={p['p_sign_test']:.2g})", va="center", fontsize=8)
            reach = max(reach, abs(value - 100 * lo) + 5, end + 30)
        ax.set_xlim(-reach, reach)
        ax.set_xlabel(f"{headline} minus the first run's, points (paired 95% CI)")
    fig.suptitle(f"natscale eval compare: {summaries[0].get('task', '')} {headline}", fontsize=10)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_png(fig, path, **{PNG_KEY: WRITER})
    finally:
        plt.close(fig)
