"""``natscale eval compare RUN...``: one markdown table of several evaluations' summaries.

With two runs or more, each run after the first is also compared with the first question by
question (:mod:`natscale.eval.paired`): the difference of the headline metric with its 95%
interval, how many questions it did better and worse on, and the sign test's p-value. ``--plot``
draws the metric and the difference (:mod:`natscale.eval.compare_plot`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _pct(value: float, ci: Any, signed: bool = False) -> str:
    text = f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    if isinstance(ci, list) and len(ci) == 2:
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def paired_rows(runs: list[str], summaries: list[dict]) -> list[dict[str, Any] | None]:
    """Per run, its paired difference with the first run (None for the first, and for a run
    without episodes or of another task)."""
    from natscale.eval.paired import paired_difference, question_scores

    base = question_scores(runs[0])
    out: list[dict[str, Any] | None] = [None]
    for run, s in zip(runs[1:], summaries[1:], strict=True):
        scores = question_scores(run)
        same_task = s.get("task") == summaries[0].get("task")
        if base is None or scores is None or not same_task:
            out.append(None)
            continue
        out.append(paired_difference(base, scores, names=(runs[0], run)))
    return out


def _paired_cells(paired: dict[str, Any] | None, first: bool) -> list[str]:
    if first:
        return ["(baseline)", "", ""]
    if paired is None or paired["value"] is None:
        return ["n/a", "", ""]
    return [
        _pct(paired["value"], paired["ci95"], signed=True) + f" on {paired['questions']}",
        f"{paired['better']} / {paired['worse']}",
        f"{paired['p_sign_test']:.2g}",
    ]


def compare(runs: list[str], plot: str | Path | None = None) -> tuple[str, str]:
    """(the markdown table of the evaluations, one line saying how many, how many are
    incomplete and where the plot is); ``plot``: a PNG path for the chart."""
    summaries = [load_summary(run) for run in runs]
    metric_names: list[str] = []
    for s in summaries:
        for name in s["metrics"]:
            if name not in metric_names:
                metric_names.append(name)
    header = ["run", "model", "marker", "episodes", *metric_names]
    paired = paired_rows(runs, summaries) if len(runs) > 1 else []
    if paired:
        headline = next(iter(summaries[0]["metrics"]))
        header += [f"{headline} vs first, paired [95% CI] on N questions", "better / worse", "p"]
    header += ["unfinished", "episodes/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, (run, s) in enumerate(zip(runs, summaries, strict=True)):
        episodes = str(s["episodes"])
        if not s.get("complete", True):
            episodes += f" of {s.get('expected_episodes', '?')} (incomplete)"
        cells = [str(run), str(s.get("model")), str(s.get("marker")), episodes]
        for name in metric_names:
            m = s["metrics"].get(name)
            cells.append("" if m is None else _pct(m["value"], m.get("ci95")))
        if paired:
            cells += _paired_cells(paired[k], k == 0)
        cells.append(str(s["episodes"] - s.get("finished", 0)))
        cells.append(format_rate(s["throughput"].get("episodes_per_s")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    unfinished = sum(not s.get("complete", True) for s in summaries)
    line = f"natscale eval compare: {len(summaries)} evaluation{'s' * (len(summaries) != 1)}"
    if unfinished:
        line += f", {unfinished} incomplete (rerun with --resume to finish)"
    if plot is not None:
        from natscale.eval.compare_plot import plot_compare

        try:
            line += f"; chart {plot_compare(runs, summaries, paired, plot)}"
        except ValueError as exc:  # a file of the user's is in the way
            raise EvalError(str(exc)) from None
        except OSError as exc:
            raise EvalError(f"--plot {plot}: cannot write the chart: {exc}") from None
    return "\n".join(lines), line
