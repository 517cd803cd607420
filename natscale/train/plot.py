"""PNG curves of a run directory's metrics.jsonl: loss (total and per class) and throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.atomic import atomic_path
from natscale.checkpoint.layout import RunDir
from natscale.train.metrics import read_metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Every record has an integer ``step`` and numbers (or nulls) where the plots read them;
    else a ValueError naming the file and line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [n for n, line in enumerate(text.split("\n")[:-1], 1) if line.strip()]
    for record, number in zip(records, lines, strict=False):
        where = f"{path}, line {number}"
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{where}: 'step' is {step!r}, not an integer step number")
        if record.get("loss") is not None and not _is_number(record["loss"]):
            raise ValueError(f"{where}: 'loss' is {record['loss']!r}, not a number")
        for key in ("loss_by_class", "tokens_per_s_per_gpu"):
            values = record.get(key)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ValueError(f"{where}: {key!r} is {values!r}, not an object of numbers")
            for name, value in values.items():
                if value is not None and not _is_number(value):
                    raise ValueError(f"{where}: {key}.{name} is {value!r}, not a number")


def _series(records: list[dict[str, Any]], *keys: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        value: Any = r
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            steps.append(r["step"])
            values.append(float(value))
    return steps, values


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write loss.png and throughput.png (to ``out_dir``, default RUN_DIR/plots); return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise ValueError(
            f"{run_dir} is not a `natscale train` run directory (it holds no metrics.jsonl)"
        )
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{path} has no records")
    _check_records(path, records)
    out = Path(out_dir) if out_dir is not None else RunDir(run_dir).plots
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; name a folder for the PNGs")
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_series(records, "loss"), label="total (objective)", color="black", linewidth=2)
    for name in records[-1].get("loss_by_class") or {}:
        ax.plot(*_series(records, "loss_by_class", name), label=f"{name} (token-mean NLL)")
    name = "/".join(Path(run_dir).resolve().parts[-2:])
    ax.set(xlabel="optimizer step", ylabel="loss", title=f"loss: {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind in ("slot", "nonpad", "trained"):
        ax.plot(*_series(records, "tokens_per_s_per_gpu", kind), label=kind)
    ax.set(xlabel="optimizer step", ylabel="tokens / s / device", title=f"throughput: {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "throughput.png"))
    plt.close("all")
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip("."))
    return path
