"""Benchmark records: machine, versions, commit and config with the numbers; JSON + markdown row.

Files go to the results folder the command names (``natscale bench --results DIR``; by default
``runs/bench/results/``, ``benchmarks/results/`` holds the tracked ones):
``<kind>_<model>_<data>_<device>_<UTC time>.json`` per run and one markdown table per kind and
device class (``<kind>_<device>.md``) that gains a row per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.atomic import atomic_write_json, atomic_write_text

MFU_FORMULA = (
    "MFU = flops_step / (step_time * world_size * peak_flops_per_device); flops_step = "
    "6*N_body*nonpad + 6*H*V*trained + 6*n_layers*d_attn*sum_seg(L_seg^2) (natscale.train.metrics; "
    "attention causal-halved per packed segment, recompute not counted)"
)


def environment() -> dict[str, Any]:
    """Device, versions, commit, and the machine's load (shared machines skew timings)."""
    from natscale.env import machine

    return machine(("flash-attn",))


def device_tag(env: dict[str, Any]) -> str:
    name = env["device"]
    if name.startswith("cpu"):
        return "cpu"
    return name.replace("NVIDIA ", "").split()[0].lower()


def write_json_atomic(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, data)


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


MD_HEADER = (
    "| time (UTC) | model | data | seq | mb x ga x world | zero/offload | AC | loss | attn | "
    "step s p50 [p10, p90] | tok/s/dev slot / nonpad / trained | MFU | peak mem GiB | "
    "data wait | pack eff | baseline trained tok/s | ratio trained | device | load | commit |\n"
    + "|---" * 20
    + "|\n"
)


def markdown_row(record: dict[str, Any]) -> str:
    s, n, env = record["spec"], record["natscale"], record["environment"]
    t = n["step_time_s"]
    r = n["tokens_per_s_per_gpu"]
    base = record.get("baseline")
    mem = ", ".join(f"{v:.2f}" for v in n["peak_memory_gib"].values()) or "n/a"
    mfu = "n/a" if n["mfu"] is None else f"{100 * n['mfu']:.1f}%"
    cells = [
        env["time_utc"],
        s["model"],
        s["data"],
        s["seq_len"],
        f"{s['micro_batch_rows']} x {s['grad_accum']} x {s['world_size']} ({s['nodes']} node)",
        f"{s['zero_stage']}/{s['offload']}",
        "on" if s["activation_checkpointing"] else "off",
        n["loss"],
        n["attn_implementation"],
        f"{t['median']:.3f} [{t['p10']:.3f}, {t['p90']:.3f}]",
        f"{_fmt(r['slot'])} / {_fmt(r['nonpad'])} / {_fmt(r['trained'])}",
        mfu,
        mem,
        f"{100 * n['data_wait_share']:.1f}%",
        f"{100 * n['packing_efficiency']:.1f}%",
        _fmt(base["tokens_per_s_per_gpu"]["trained"]) if base else "–",
        _ratio_cell(record),
        env["device"][:40],
        f"{env['load_average_1_5_15'][0]:.1f}",
        env["git_commit"][:8],
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |\n"


def _ratio_cell(record: dict[str, Any]) -> str:
    """``1.23x`` for one run; ``1.23x [1.10-1.39] n=3`` (median [min-max]) over repeats."""
    ratio = record.get("ratio", {}).get("tokens_per_s_trained")
    if not ratio:
        return "–"
    s = record.get("ratio_spread", {}).get("tokens_per_s_trained")
    if not s or s["n"] < 2:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x [{s['min']:.2f}-{s['max']:.2f}] n={s['n']}"


def write_record(record: dict[str, Any], results_dir: Path, *, kind: str = "throughput") -> Path:
    """Write the JSON record and append its markdown row; returns the JSON path."""
    env = record["environment"]
    stamp = env["time_utc"].replace("-", "").replace(":", "")
    s = record["spec"]
    tag = device_tag(env)
    path = write_json_atomic(
        results_dir / f"{kind}_{s['model']}_{s['data']}_{tag}_{stamp}.json", record
    )
    table = results_dir / f"{kind}_{tag}.md"
    text = table.read_text(encoding="utf-8") if table.is_file() else f"# {kind} ({tag})\n\n"
    if MD_HEADER not in text:
        text += MD_HEADER
    atomic_write_text(table, text + markdown_row(record))
    return path


def summary_line(record: dict[str, Any]) -> str:
    n = record["natscale"]
    r = n["tokens_per_s_per_gpu"]
    ratio = record.get("ratio", {}).get("tokens_per_s_trained")
    mfu = "n/a (no peak for this device)" if n["mfu"] is None else f"{100 * n['mfu']:.1f}%"
    vs = f"; natscale/baseline trained tok/s {ratio:.2f}x" if ratio else ""
    s = record.get("ratio_spread", {}).get("tokens_per_s_trained")
    if ratio and s and s["n"] > 1:
        vs += f" (median of {s['n']} repeats; range {s['min']:.2f}-{s['max']:.2f}x)"
    elif ratio:
        vs += " (1 run: no spread; use --repeats 3 or more)"
    return (
        f"bench throughput: {record['spec']['model']} on {record['spec']['data']}: step "
        f"{n['step_time_s']['median']:.3f} s; tok/s/device slot {r['slot']:,.0f} nonpad "
        f"{r['nonpad']:,.0f} trained {r['trained']:,.0f}; MFU {mfu}{vs}"
    )
