"""``natscale eval compare RUN...``: one markdown table of several evaluations' summaries."""

from __future__ import annotations

import json
from pathlib import Path

from natscale.eval.errors import EvalError


def load_summary(run: str | Path) -> dict:
    path = Path(run)
    if path.is_dir():
        path = path / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{path}: no summary.json (give eval output directories)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: not a JSON summary ({exc})") from None


def compare_table(runs: list[str]) -> str:
    summaries = [(run, load_summary(run)) for run in runs]
    metric_names: list[str] = []
    for _, s in summaries:
        for name in s.get("metrics", {}):
            if name not in metric_names:
                metric_names.append(name)
    header = ["run", "model", "marker", "episodes", *metric_names, "unfinished", "episodes/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, s in summaries:
        cells = [str(run), str(s.get("model")), str(s.get("marker")), str(s.get("episodes"))]
        for name in metric_names:
            m = s.get("metrics", {}).get(name)
            if m is None:
                cells.append("")
                continue
            text = f"{100 * m['value']:.1f}"
            if m.get("ci95"):
                text += f" [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"
            cells.append(text)
        cells.append(str(s.get("episodes", 0) - s.get("finished", 0)))
        cells.append(str(s.get("throughput", {}).get("episodes_per_s")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
