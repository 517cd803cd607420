"""Benchmark datasets: packed rows for natscale and the same examples unpacked for the baseline.

Both are ``natscale prepare``-format directories (``datasets`` save + ``stats.json``), read by the
unchanged trainer. The baseline set holds exactly the segments of the packed set, one per row at
its own length; the trainer pads each micro-batch to its longest row, as HF's dynamic-padding
collators do. Built once per (preset, seq_len, vocab, size, seed, packing algorithm) and cached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from natscale.bench.presets import DATA_PRESETS, REPO, LengthDist
from natscale.data.packing import DEFAULT_ALGORITHM, PackedColumns, build_rows, pack
from natscale.data.prepared import PreparedDir

CLASSES = ["success", "failure"]
FIRST_ID = 4  # ids below are special tokens in every preset's tokenizer


def synthetic_lengths(
    dist: LengthDist, *, num: int, seq_len: int, rng: np.random.Generator
) -> np.ndarray:
    """``num`` log-normal trajectory lengths, rounded and clipped to [min_len, seq_len]."""
    lengths = np.exp(rng.normal(math.log(dist.median), dist.sigma, size=num))
    return np.clip(lengths.round().astype(np.int64), dist.min_len, seq_len)


def synthetic_examples(
    dist: LengthDist, *, num: int, seq_len: int, vocab: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``num`` trajectories: int64 ids [n] and bool train masks [n], lengths in [min_len, seq_len]."""
    rng = np.random.default_rng(seed)
    lengths = synthetic_lengths(dist, num=num, seq_len=seq_len, rng=rng)
    ids, masks = [], []
    period = dist.assistant + dist.observation
    for n in lengths:
        ids.append(rng.integers(FIRST_ID, vocab, size=int(n), dtype=np.int64))
        pos = np.arange(n) - dist.prompt
        masks.append((pos >= 0) & (pos % period < dist.assistant))
    return ids, masks


def full_examples(*, num: int, seq_len: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(FIRST_ID, vocab, size=seq_len, dtype=np.int64) for _ in range(num)]
    return ids, [np.ones(seq_len, dtype=bool) for _ in range(num)]


def unpack(rows: PackedColumns) -> PackedColumns:
    """One row per segment of ``rows``, each exactly as long as its segment (no padding)."""
    ids, masks, classes, weights = [], [], [], []
    for r in range(len(rows)):
        cu = rows.cu_seqlens[r]
        for s in range(len(cu) - 1):
            a, b = int(cu[s]), int(cu[s + 1])
            ids.append(rows.input_ids[r][a:b])
            # targets[t] = ids[t+1] where token t+1 is trained: recover the train mask
            mask = np.zeros(b - a, dtype=bool)
            mask[1:] = rows.targets[r][a : b - 1] != -100
            masks.append(mask)
            classes.append(int(rows.segment_class[r][s]))
            weights.append(float(rows.segment_weight[r][s]))
    out = PackedColumns([], [], [], [], [], [], [], [])
    for i in range(len(ids)):  # build_rows pads every row of a call to one length
        one = build_rows(
            [[0]],
            [ids[i]],
            [masks[i]],
            [classes[i]],
            [weights[i]],
            max_seq_len=len(ids[i]),
            pad_id=0,
        )
        for key, column in one.columns().items():
            getattr(out, key).extend(column)
    return out


def _save(rows: PackedColumns, out: Path, stats: dict) -> Path:
    import datasets

    from natscale.data.output import rows_to_dataset, write_json

    datasets.disable_progress_bars()

    def fill(tmp: PreparedDir) -> None:
        rows_to_dataset(rows).save_to_disk(str(tmp.root))
        write_json(tmp.stats, stats)

    return PreparedDir(out).write(fill, overwrite=True)


def _load_rows(path: Path) -> PackedColumns:
    ds = PreparedDir(path).open().with_format("numpy")
    cols = {k: list(ds[k]) for k in ("input_ids", "position_ids", "targets", "cu_seqlens")}
    cols |= {k: list(ds[k]) for k in ("segment_class", "segment_weight")}
    return PackedColumns(
        **cols,
        num_tokens=[int(c[-1]) for c in cols["cu_seqlens"]],
        num_trained=[int((t != -100).sum()) for t in cols["targets"]],
    )


def _prepare_example(seq_len: int, out: Path) -> None:
    from natscale.config.loader import load_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    path = REPO / "examples/configs/prepare_math.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    # its paths are relative to the checkout; bench may run from any directory
    sources = [
        {
            **src,
            **{k: [str(REPO / f) for f in src[k]] for k in ("paths", "questions") if k in src},
            **({"prompt": str(REPO / src["prompt"])} if "prompt" in src else {}),
        }
        for src in raw["sources"]
    ]
    overrides = [
        f"pack.max_seq_len={seq_len}",
        "num_proc=1",
        "overwrite=true",
        f"render.tokenizer={REPO / raw['render']['tokenizer']}",
        f"sources={json.dumps(sources)}",
    ]
    config = load_config(path, PrepareConfig, overrides)
    prepare(config, out, progress=False)


def build_datasets(
    preset: str, *, seq_len: int, vocab: int, min_rows: int, seed: int, cache_dir: Path
) -> tuple[Path, Path]:
    """(packed dataset dir, unpacked baseline dataset dir) for a data preset, cached."""
    if preset not in DATA_PRESETS:
        raise ValueError(f"unknown data preset {preset!r}; one of {', '.join(DATA_PRESETS)}")
    key = f"{preset}_L{seq_len}" + ("" if preset == "example" else f"_V{vocab}_r{min_rows}_s{seed}")
    key += f"_{DEFAULT_ALGORITHM}"  # rows packed by an older default are not reused
    packed_dir, base_dir = cache_dir / key / "packed", cache_dir / key / "baseline"
    if PreparedDir(packed_dir).stats.is_file() and PreparedDir(base_dir).stats.is_file():
        return packed_dir, base_dir
    stats = {"classes": CLASSES, "preset": preset, "seq_len": seq_len}
    if preset == "example":
        _prepare_example(seq_len, packed_dir)
        rows = _load_rows(packed_dir)
    else:
        dist = DATA_PRESETS[preset]
        if dist is None:
            num = min_rows
            ids, masks = full_examples(num=num, seq_len=seq_len, vocab=vocab, seed=seed)
        else:
            per_row = max(1.0, seq_len / (dist.median * math.exp(dist.sigma**2 / 2)))
            num = math.ceil(min_rows * per_row * 1.25) + 8
            ids, masks = synthetic_examples(dist, num=num, seq_len=seq_len, vocab=vocab, seed=seed)
        classes = [i % 2 for i in range(len(ids))]
        rows = pack(ids, masks, classes, [1.0] * len(ids), max_seq_len=seq_len, pad_id=0, seed=seed)
        _save(rows, packed_dir, stats)
    _save(unpack(rows), base_dir, {**stats, "unpacked": True})
    return packed_dir, base_dir


def mean_segments_per_row(path: Path) -> float:
    cu = PreparedDir(path).open().select_columns(["cu_seqlens"]).with_format("numpy")
    counts = [len(c) - 1 for c in cu["cu_seqlens"]]
    return sum(counts) / max(len(counts), 1)
