"""Sweeps collected into a table and a PNG; the scaling projection behind ``bench project``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from natscale.atomic import atomic_write_text
from natscale.bench.record import write_json_atomic
from natscale.figures import save_png


def collect(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One row per record: the swept value, step time, token rates, MFU, memory, baseline ratio."""
    rows = []
    for r in records:
        n = r["natscale"]
        rows.append(
            {
                key: r["spec"][key],
                "world_size": r["spec"]["world_size"],
                "step_s_median": n["step_time_s"]["median"],
                "step_s_p10": n["step_time_s"]["p10"],
                "step_s_p90": n["step_time_s"]["p90"],
                **{f"tok_s_dev_{k}": v for k, v in n["tokens_per_s_per_gpu"].items()},
                "mfu": n["mfu"],
                "peak_mem_gib": max(n["peak_memory_gib"].values(), default=None),
                "data_wait_share": n["data_wait_share"],
                "packing_efficiency": n["packing_efficiency"],
                "ratio_trained": (r.get("ratio") or {}).get("tokens_per_s_trained"),
                "load_1min": r["environment"]["load_average_1_5_15"][0],
                "json": Path(r["json"]).name,
            }
        )
    first = rows[0]["tok_s_dev_trained"] if rows else None
    for row in rows:
        row["efficiency_vs_first"] = row["tok_s_dev_trained"] / first if first else None
    cols = list(rows[0]) if rows else []

    def cell(v: Any) -> str:
        return f"{v:,.4g}" if isinstance(v, float) else str(v)

    md = "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|\n"
    md += "".join("| " + " | ".join(cell(row[c]) for c in cols) + " |\n" for row in rows)
    return {"key": key, "rows": rows, "markdown": md}


def write_sweep(
    table: dict[str, Any], records: list[dict[str, Any]], results: Path, *, name: str
) -> dict[str, Path]:
    env = records[0]["environment"]
    stamp = env["time_utc"].replace("-", "").replace(":", "")
    base = results / f"sweep_{name}_{records[0]['spec']['model']}_{stamp}".replace(".", "_")
    write_json_atomic(base.with_suffix(".json"), {"table": table, "records": records})
    md = base.with_suffix(".md")
    atomic_write_text(
        md,
        f"# sweep {name}\n\n`{records[0]['command']}`\n\ndevice: {env['device']}; commit "
        f"{env['git_commit'][:8]}; load {env['load_average_1_5_15']}\n\n{table['markdown']}",
    )
    return {"json": base.with_suffix(".json"), "md": md, "png": base.with_suffix(".png")}


def plot_sweep(table: dict[str, Any], key: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [str(r[key]) for r in table["rows"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in ("slot", "nonpad", "trained"):
        a.plot(xs, [r[f"tok_s_dev_{kind}"] for r in table["rows"]], marker="o", label=kind)
    a.set(xlabel=key, ylabel="tokens/s/device", title="throughput")
    a.legend()
    b.plot(xs, [r["efficiency_vs_first"] for r in table["rows"]], marker="o")
    b.set(xlabel=key, ylabel="trained tok/s/device vs first", title="relative to the first value")
    save_png(fig, png)
    plt.close(fig)


def _gpu_workload(args: argparse.Namespace):
    """Params, layers and a stated single-node step for a preset (from assumed MFU if not given)."""
    from natscale.bench.presets import count_params, model_config
    from natscale.bench.scaling import ZeroWorkload

    cfg = model_config(args.model)
    params = count_params(args.model)
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    d_attn = heads * cfg.get("head_dim", h // heads)
    emb = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    rows = args.micro_batch_rows * args.grad_accum
    tokens = args.seq_len * rows
    flops = 6 * (params - emb) * tokens + 6 * h * v * tokens
    flops += 6 * layers * d_attn * args.seq_len**2 * rows  # full rows: an upper bound
    t_1 = args.step_s or flops / (args.assumed_mfu * args.peak_tflops * 1e12)
    source = (
        f"measured ({args.step_s} s)"
        if args.step_s
        else f"assumed MFU {args.assumed_mfu} at {args.peak_tflops} TFLOP/s, full rows of "
        f"{args.seq_len} tokens ({flops:.3g} FLOP/step/device)"
    )
    w = ZeroWorkload(params, layers, tokens, grad_accum=args.grad_accum, overlap=args.overlap)
    return w, t_1, source


def _calibrated_workload(path: Path):
    """The CPU weak-scaling sweep over nodes (1 device each): fit the network, keep its step."""
    from natscale.bench.presets import count_params, model_config
    from natscale.bench.scaling import ZeroWorkload, calibrate_bandwidth

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--calibrate {path}: cannot read a sweep JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"--calibrate {path}: not a sweep JSON (no 'records' list)")
    try:
        by_nodes = {r["spec"]["nodes"]: r for r in data["records"]}
        if 1 not in by_nodes or 2 not in by_nodes:
            raise ValueError(
                f"{path}: needs runs on 1 and 2 nodes (a sweep with --param nodes=1,2)"
            )
        for n in (1, 2):
            world = by_nodes[n]["spec"]["world_size"]
            if world != n:  # the fit takes the 1-node step as free of communication
                raise ValueError(
                    f"--calibrate {path}: the {n}-node run has {world} ranks; the fit needs one "
                    "rank per node (a sweep with --param nodes=1,2 and --world-size 1)"
                )
        r1 = by_nodes[1]
        spec = r1["spec"]
        fp32 = (spec["precision"] or ("fp32" if spec["device"] == "cpu" else "bf16")) == "fp32"
        nbytes = 4 if fp32 else 2
        w = ZeroWorkload(
            count_params(spec["model"]),
            model_config(spec["model"])["num_hidden_layers"],
            r1["natscale"]["tokens_per_step"]["trained"],
            grad_accum=spec["grad_accum"],
            param_bytes=nbytes,
            grad_bytes=nbytes,
        )
        t_1 = r1["natscale"]["step_time_s"]["median"]
        t_2 = by_nodes[2]["natscale"]["step_time_s"]["median"]
        device = r1["environment"]["device"]
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a hand-made or cut file
        raise ValueError(
            f"--calibrate {path}: not a sweep JSON of `natscale bench sweep` (a record lacks "
            f"or mistypes {exc}); give the JSON a sweep with --param nodes=1,2 wrote"
        ) from None
    net = calibrate_bandwidth(w, t_1, t_2)
    source = f"measured on {device} ({path.name}); 2-node step {t_2:.4g} s"
    return w, net, t_1, source


def projection(args: argparse.Namespace) -> dict[str, Any]:
    from natscale.bench.scaling import NETWORKS, assumptions, project

    if args.calibrate:
        w, net, t_1, source = _calibrated_workload(args.calibrate)
        label = f"{args.calibrate.stem}-calibrated"
    else:
        if args.network not in NETWORKS:
            raise ValueError(f"unknown network {args.network!r}; one of {', '.join(NETWORKS)}")
        net = NETWORKS[args.network]
        w, t_1, source = _gpu_workload(args)
        label = args.model
    out = {
        "assumptions": assumptions(w, net, t_1, source),
        "weak": project(w, net, t_1, mode="weak"),
        "strong": project(w, net, t_1, mode="strong"),
    }
    md = f"assumptions: {json.dumps(out['assumptions'])}\n\n"
    md += "| nodes | devices | weak tok/s/dev | weak eff | strong tok/s/dev | strong eff |\n"
    md += "|---|---|---|---|---|---|\n"
    for a, b in zip(out["weak"], out["strong"], strict=True):
        md += (
            f"| {a['nodes']} | {a['devices']} | {a['tokens_per_s_per_device']:,.1f} | "
            f"{a['efficiency']:.3f} | {b['tokens_per_s_per_device']:,.1f} | {b['efficiency']:.3f} |\n"
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = args.results / f"scaling_{label}_{net.name}_{stamp}".replace(".", "_")
    out["markdown"] = md
    out["network"] = net.name
    out["label"] = label
    out["json"] = str(write_json_atomic(base.with_suffix(".json"), out))
    atomic_write_text(base.with_suffix(".md"), f"# scaling projection: {label}\n\n{md}")
    out["png"] = str(base.with_suffix(".png"))
    _plot_projection(out, label, Path(out["png"]))
    return out


def _plot_projection(out: dict[str, Any], label: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("weak", "strong"):
        nodes = [r["nodes"] for r in out[mode]]
        a.plot(nodes, [r["tokens_per_s_per_device"] for r in out[mode]], marker="o", label=mode)
        b.plot(nodes, [r["efficiency"] for r in out[mode]], marker="o", label=mode)
    for ax, title in ((a, "tokens/s/device"), (b, "scaling efficiency")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="nodes", title=f"{label}: {title} ({out['network']})")
        ax.legend()
    save_png(fig, png)
    plt.close(fig)
