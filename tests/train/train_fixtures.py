"""Small packed datasets, model configs and run configs for the trainer tests.

Rows follow natscale.data.schema exactly. Each segment is a learnable sequence (an arithmetic
progression mod the vocabulary), its first tokens an untrained "prompt", so a tiny model's loss
falls within a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from natscale.data.schema import IGNORE_INDEX, ROW_FIELDS, validate_row

VOCAB = 96


def make_segment(rng: np.random.Generator, length: int, vocab: int) -> np.ndarray:
    start, stride = rng.integers(0, vocab), rng.integers(1, 4)
    return (start + stride * np.arange(length)) % vocab


def pack(segments: list[tuple[np.ndarray, int, int, float]], row_len: int) -> dict[str, Any]:
    """segments: (tokens, prompt_len, class, weight) -> one packed row of ``row_len`` tokens."""
    ids, pos, tgt, cu = [], [], [], [0]
    for tokens, prompt, _, _ in segments:
        n = len(tokens)
        ids += tokens.tolist()
        pos += list(range(n))
        t = [IGNORE_INDEX] * n
        for i in range(max(prompt - 1, 0), n - 1):
            t[i] = int(tokens[i + 1])
        tgt += t
        cu.append(cu[-1] + n)
    pad = row_len - len(ids)
    assert pad >= 0
    row = {
        "input_ids": ids + [0] * pad,
        "position_ids": pos + list(range(pad)),
        "targets": tgt + [IGNORE_INDEX] * pad,
        "cu_seqlens": cu,
        "segment_class": [c for _, _, c, _ in segments],
        "segment_weight": [w for _, _, _, w in segments],
    }
    validate_row(row)
    return row


def make_segments(num: int, *, seed: int, vocab: int = VOCAB, max_len: int = 20):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        length = int(rng.integers(4, max_len + 1))
        out.append(
            (
                make_segment(rng, length, vocab),
                int(rng.integers(1, 4)),
                int(rng.integers(0, 2)),
                1.0,
            )
        )
    return out


def pack_greedy(segments, row_len: int) -> list[dict[str, Any]]:
    """Next-fit packing in the given order."""
    rows, current, used = [], [], 0
    for seg in segments:
        if used + len(seg[0]) > row_len:
            rows.append(pack(current, row_len))
            current, used = [], 0
        current.append(seg)
        used += len(seg[0])
    if current:
        rows.append(pack(current, row_len))
    return rows


def save_rows(rows: list[dict[str, Any]], path: Path, *, classes=("success", "failure")) -> Path:
    import datasets

    features = datasets.Features(
        {f: datasets.List(datasets.Value(dtype)) for f, dtype in ROW_FIELDS.items()}
    )
    data = {f: [r[f] for r in rows] for f in ROW_FIELDS}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(path))
    (path / "stats.json").write_text(json.dumps({"classes": list(classes)}))
    return path


def write_model_config(path: Path, *, tied: bool = False, vocab: int = VOCAB) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": tied,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def write_run_config(
    path: Path, *, data_dir: Path, model_config: Path | None = None, out: Path, **sections
) -> Path:
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"config": str(model_config), "activation_checkpointing": False},
        "data": {"path": str(data_dir), "shuffle": True, "micro_batch_rows": 1},
        "train": {"precision": "fp32", "lr": 3e-3, "steps": 8, "seed": 0, "warmup_steps": 1},
        "deepspeed": {"config": "ds_configs/zero3_cpu.json"},
        "checkpoint": {"every_steps": 0, "keep_last": 2, "export_hf": False},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- signalling the ranks of a harness run ---------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
TAG = "NATSCALE_TRAIN_TEST_TAG"  # put in a run's env to find its rank processes


def signal_ranks(tag: str, sig: int) -> int:
    """Send ``sig`` to every rank process of the run started with ``env={TAG: tag}``, as SLURM
    signals every task. Returns how many were signalled."""
    import psutil

    def env_of(proc) -> dict[str, str]:
        try:
            return proc.environ() if proc is not None else {}
        except psutil.Error:
            return {}

    def is_rank(env: dict[str, str]) -> bool:
        return "RANK" in env or "OMPI_COMM_WORLD_RANK" in env

    count = 0
    for proc in psutil.process_iter():
        env = env_of(proc)
        if env.get(TAG) == tag and is_rank(env) and not is_rank(env_of(proc.parent())):
            proc.send_signal(sig)
            count += 1
    return count
