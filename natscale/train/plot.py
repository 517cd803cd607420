"""PNG curves of a run directory's metrics.jsonl: loss (total and per class) and throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.checkpoint.layout import RunDir
from natscale.figures import PNG_KEY, replaceable, save_png
from natscale.train.metrics import read_metrics

PLOTS = ("loss.png", "throughput.png")


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
    if not Path(run_dir).exists():
        raise ValueError(f"{run_dir} does not exist; give the output_dir of a `natscale train` run")
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
    if out_dir is not None:  # RUN_DIR/plots is the run's own: its PNGs are replaced
        _check_replaceable([out / name for name in PLOTS])
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
    written.append(_save(fig, out / PLOTS[0]))

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind in ("slot", "nonpad", "trained"):
        ax.plot(*_series(records, "tokens_per_s_per_gpu", kind), label=kind)
    ax.set(xlabel="optimizer step", ylabel="tokens / s / device", title=f"throughput: {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / PLOTS[1]))
    plt.close("all")
    return written


def _check_replaceable(paths: list[Path]) -> None:
    """Each existing path is a PNG ``natscale plot`` wrote (its text chunk says so); a file of
    the user's with the same name is never replaced."""
    for path in paths:
        if not replaceable(path, "plot"):
            raise ValueError(
                f"--out {path.parent} already holds {path.name}, which natscale plot did not "
                "write, and plotting would replace it; move it, or name another folder with --out"
            )


def _save(fig: Any, path: Path) -> Path:
    return save_png(fig, path, **{PNG_KEY: "plot"})
