"""Benchmark `natscale convert zero-to-hf` against DeepSpeed's zero_to_fp32.py on one checkpoint.

Each converter runs in its own process; its peak resident set size is that process's
``ru_maxrss`` (from ``os.wait4``, so one child's figure, mapped file pages included), its time the
wall clock around the process. One untimed run of each first warms the page cache (the
checkpoint is read the same way by both); then the timed runs alternate between the converters.
Reported: median and range per converter and output dtype, and the ratios natscale / DeepSpeed.
After timing, the two outputs are compared tensor by tensor (they must be identical).

Checkpoint: ``--run DIR`` (a run directory with ``checkpoints/`` and ``hf_config/``), or
``--make SIZE`` to train a random-init Llama for one step on CPU under ZeRO-3 (bf16, 1 rank) with
``tests/convert/make_zero_checkpoint.py`` (``1b``: 953M parameters; needs ~21 GB of RAM).

    python benchmarks/convert/bench_convert.py --make 1b --work /tmp/natscale_bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.env import machine  # noqa: E402

MAKER = REPO / "tests" / "convert" / "make_zero_checkpoint.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
    )
    return env


def make_checkpoint(size: str, work: Path) -> Path:
    run = work / f"ckpt_{size}"
    if (run / "z3-bf16" / "checkpoints" / "latest").exists():
        return run / "z3-bf16"
    cmd = [
        sys.executable,
        str(MAKER),
        "--out",
        str(run),
        "--variants",
        "z3-bf16",
        "--size",
        size,
        "--steps",
        "1",
        "--seq-len",
        "64",
        "--no-reference",
    ]
    print("making checkpoint:", " ".join(cmd), flush=True)
    subprocess.run(cmd, env={**_env(), "MASTER_PORT": "29731"}, check=True)
    return run / "z3-bf16"


def commands(run: Path, out: Path, dtype: str) -> dict[str, list[str]]:
    ckpt = run / "checkpoints"
    ds_script = (
        [str(ckpt / "zero_to_fp32.py")]
        if dtype == "fp32"
        else [str(ckpt / "zero_to_torch.py"), "--dtype", dtype]
    )
    return {
        "deepspeed": [sys.executable, *ds_script, str(ckpt), str(out), "--safe_serialization"],
        "natscale": [
            sys.executable,
            "-m",
            "natscale.cli",
            "convert",
            "zero-to-hf",
            str(ckpt),
            str(out),
            "--dtype",
            dtype,
            "--quiet",
        ],
    }


def timed(cmd: list[str], out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one run of ``cmd`` writing ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def compare_outputs(a: Path, b: Path) -> int:
    """Number of tensors compared; raises if any differ. Reads one tensor at a time."""
    import torch
    from safetensors import safe_open

    def files(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})  # noqa: SIM118 - safe_open has no __iter__
        return out

    fa, fb = files(a), files(b)
    shared = set(fa) & set(fb)
    # DeepSpeed writes tied weights twice (lm_head = embed); natscale once, as save_pretrained does
    assert set(fa) - shared <= {"lm_head.weight"} and not set(fb) - shared, set(fa) ^ set(fb)
    for name in sorted(shared):
        with safe_open(str(fa[name]), "pt") as ha, safe_open(str(fb[name]), "pt") as hb:
            if not torch.equal(ha.get_tensor(name), hb.get_tensor(name)):
                raise AssertionError(f"outputs differ at {name}")
    return len(shared)


def checkpoint_info(run: Path) -> dict:
    ckpt = run / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    files = list((ckpt / tag).iterdir())
    cfg = json.loads((run / "hf_config" / "config.json").read_text())
    return {
        "path": str(ckpt),
        "tag": tag,
        "bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
        "config": cfg,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run dir with checkpoints/ and hf_config/")
    src.add_argument("--make", choices=["tiny", "500m", "1b"], help="make a checkpoint first")
    p.add_argument("--work", type=Path, default=Path("/tmp/natscale_bench"))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    run = args.run or make_checkpoint(args.make, args.work)
    info = {"machine": machine(("safetensors",)), "checkpoint": checkpoint_info(run), "runs": {}}
    rows = []
    for dtype in args.dtypes.split(","):
        outs = {name: args.work / f"out_{name}_{dtype}" for name in ("deepspeed", "natscale")}
        cmds = {name: commands(run, outs[name], dtype)[name] for name in outs}
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in cmds}
        for name, cmd in cmds.items():  # warm-up: page cache, python bytecode
            timed(cmd, outs[name])
        for _ in range(args.repeats):
            for name, cmd in cmds.items():
                samples[name].append(timed(cmd, outs[name]))
                print(
                    f"{dtype} {name}: {samples[name][-1][0]:.1f} s, "
                    f"{samples[name][-1][1] / 2**30:.2f} GiB",
                    flush=True,
                )
        n = compare_outputs(outs["deepspeed"], outs["natscale"])
        med = {
            k: (statistics.median(t for t, _ in v), statistics.median(r for _, r in v))
            for k, v in samples.items()
        }
        ratio_t = med["natscale"][0] / med["deepspeed"][0]
        ratio_r = med["natscale"][1] / med["deepspeed"][1]
        info["runs"][dtype] = {
            "commands": {k: " ".join(v) for k, v in cmds.items()},
            "samples": samples,
            "identical_tensors": n,
            "time_ratio": ratio_t,
            "rss_ratio": ratio_r,
        }
        for name, v in samples.items():
            ts, rs = [t for t, _ in v], [r / 2**30 for _, r in v]
            rows.append(
                f"| {dtype} | {name} | {statistics.median(ts):.1f} ({min(ts):.1f}-"
                f"{max(ts):.1f}) | {statistics.median(rs):.2f} ({min(rs):.2f}-"
                f"{max(rs):.2f}) |"
            )
        rows.append(
            f"| {dtype} | **ratio natscale/deepspeed** | **{ratio_t:.2f}x** | **{ratio_r:.2f}x** |"
        )
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
    cfg = info["checkpoint"]["config"]
    table = "\n".join(
        [
            "| out dtype | converter | time s, median (range) | peak RSS GiB, median (range) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    header = (
        f"ZeRO checkpoint {info['checkpoint']['path']} ({info['checkpoint']['bytes'] / 2**30:.1f}"
        f" GiB on disk): Llama hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
        f"vocab {cfg['vocab_size']}; {args.repeats} timed runs each after one warm-up\n"
    )
    print(header + table)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"convert_{platform.node()}_{stamp}"
    info["command"] = " ".join([sys.executable, *sys.argv])
    base.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    m = info["machine"]
    v = m["versions"]
    base.with_suffix(".md").write_text(
        f"# natscale convert zero-to-hf vs DeepSpeed zero_to_fp32\n\n{header}\n{table}\n\n"
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['mem_gib']} GiB; load average at start "
        f"{m['load_average_1_5_15']}. Versions: python {m['python']}, torch {v['torch']}, "
        f"deepspeed {v['deepspeed']}, transformers {v['transformers']}, safetensors "
        f"{v['safetensors']}.\n\n"
        f"Command: `{info['command']}`\n"
    )
    print(f"bench_convert: wrote {base}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
