"""``natscale eval compare RUN...``: one markdown table of several evaluations' summaries."""

from __future__ import annotations

import json
from pathlib import Path

from natscale.eval.errors import EvalError


def format_rate(value: float | None) -> str:
    """A rate as eval shows it (summary line, compare table): 3 significant digits (``0.0123``,
    ``3.1``, ``290``), whole numbers from 100 on (``1,234``); ``n/a`` when unknown."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def load_summary(run: str | Path) -> dict:
    """The summary.json of an eval output directory (or the file itself); EvalError naming the
    file when it is not one ``natscale eval`` wrote."""
    path = Path(run)
    if path.is_dir():
        path = path / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{path}: no summary.json (give eval output directories)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: not a JSON summary ({exc})") from None
    if not _is_eval_summary(data):
        raise EvalError(
            f"{path}: not an eval summary.json (no metrics with values, episodes and "
            "throughput); give the output directories of `natscale eval`"
        )
    return data


def _is_eval_summary(data: object) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        return False
    metrics_ok = all(
        isinstance(m, dict) and isinstance(m.get("value"), int | float)
        for m in data["metrics"].values()
    )
    return (
        metrics_ok
        and isinstance(data.get("episodes"), int)
        and isinstance(data.get("finished", 0), int)
        and isinstance(data.get("complete", True), bool)
        and isinstance(data.get("throughput"), dict)
    )


def compare_table(runs: list[str]) -> str:
    """One markdown table of the evaluations, a run not yet complete marked ``(incomplete)``."""
    return compare(runs)[0]


def compare(runs: list[str]) -> tuple[str, str]:
    """(the markdown table of the evaluations, one line saying how many and how many are
    incomplete)."""
    summaries = [(run, load_summary(run)) for run in runs]
    metric_names: list[str] = []
    for _, s in summaries:
        for name in s["metrics"]:
            if name not in metric_names:
                metric_names.append(name)
    header = ["run", "model", "marker", "episodes", *metric_names, "unfinished", "episodes/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, s in summaries:
        episodes = str(s["episodes"])
        if not s.get("complete", True):
            episodes += f" of {s.get('expected_episodes', '?')} (incomplete)"
        cells = [str(run), str(s.get("model")), str(s.get("marker")), episodes]
        for name in metric_names:
            m = s["metrics"].get(name)
            if m is None:
                cells.append("")
                continue
            text = f"{100 * m['value']:.1f}"
            ci = m.get("ci95")
            if isinstance(ci, list) and len(ci) == 2:
                text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
            cells.append(text)
        cells.append(str(s["episodes"] - s.get("finished", 0)))
        cells.append(format_rate(s["throughput"].get("episodes_per_s")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    unfinished = sum(not s.get("complete", True) for _, s in summaries)
    line = f"natscale eval compare: {len(summaries)} evaluation{'s' * (len(summaries) != 1)}"
    if unfinished:
        line += f", {unfinished} incomplete (rerun with --resume to finish)"
    return "\n".join(lines), line
