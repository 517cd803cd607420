"""A half-written prepared-data folder is a named error, and every row's ids are checked
against the vocabulary before training starts (issue 12, items 6 and 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from natscale.cli.main import main
from natscale.config.loader import load_config
from natscale.config.run import RunConfig
from natscale.data.prepared import PreparedDataError, PreparedDir, first_bad_token
from natscale.train.preflight import PreflightError, check_run
from natscale.train.rows import PreparedRowsReader
from tests.train.train_fixtures import (
    VOCAB,
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)


@pytest.fixture
def setup(tmp_path: Path):
    rows = pack_greedy(make_segments(40, seed=0), 64)
    save_rows(rows, tmp_path / "data")
    write_model_config(tmp_path / "model")
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=tmp_path / "model",
        out=tmp_path / "out",
    )
    return tmp_path, cfg, rows


def _check(cfg: Path, *overrides: str):
    return check_run(load_config(cfg, RunConfig, list(overrides)), resume=False)


def _arrow(data: Path) -> Path:
    (arrow,) = sorted(data.glob("data-*.arrow"))
    return arrow


def _damage(kind: str, data: Path) -> str:
    """Damage ``data`` one way; the text the error must hold."""
    if kind == "truncated":
        arrow = _arrow(data)
        with arrow.open("r+b") as fh:
            fh.truncate(arrow.stat().st_size // 2)
        return rf"{arrow.name}: truncated or damaged Arrow file"
    if kind == "empty-arrow":
        _arrow(data).write_bytes(b"")
        return r"truncated or damaged Arrow file \(0 bytes"
    if kind == "missing-arrow":
        name = _arrow(data).name
        _arrow(data).unlink()
        return rf"data file\(s\) {name} missing"
    (data / "stats.json").unlink()
    return r"not a complete `natscale prepare` output: stats.json missing"


@pytest.mark.parametrize("kind", ["truncated", "empty-arrow", "missing-arrow", "no-stats"])
def test_half_written_data_is_a_named_error(setup, capsys, kind):
    tmp, cfg, _ = setup
    data = tmp / "data"
    needle = _damage(kind, data)
    with pytest.raises(PreflightError, match=needle) as exc:
        _check(cfg)
    assert str(data) in str(exc.value) and "re-run `natscale prepare`" in str(exc.value)
    with pytest.raises(PreparedDataError, match=needle):
        PreparedRowsReader(data)  # the trainer's own reader says the same
    assert main(["train", str(cfg)]) == 2  # exit 2, before any process group
    err = capsys.readouterr().err
    assert "re-run `natscale prepare`" in err and "Traceback" not in err


def test_bench_reader_names_a_damaged_cache(setup):
    from natscale.bench.datasets import mean_segments_per_row

    tmp, _, _ = setup
    needle = _damage("truncated", tmp / "data")
    with pytest.raises(PreparedDataError, match=needle):
        mean_segments_per_row(tmp / "data")


def test_rows_lost_at_a_batch_boundary_are_caught_by_the_stats_count(setup):
    tmp, cfg, rows = setup
    stats = json.loads((tmp / "data" / "stats.json").read_text())
    stats["packing"] = {"rows": len(rows) + 5}
    (tmp / "data" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(PreflightError, match=rf"hold {len(rows)} rows but stats.json says"):
        _check(cfg)


def test_a_bad_id_in_the_last_row_is_found_before_training(setup, capsys):
    tmp, cfg, rows = setup
    rows[-1]["input_ids"][-1] = VOCAB + 7  # the last token of the last row
    shutil.rmtree(tmp / "data")
    save_rows(rows, tmp / "data")
    last = len(rows) - 1
    with pytest.raises(PreflightError, match=rf"row {last} holds token id {VOCAB + 7}, outside"):
        _check(cfg)
    rows[-1]["input_ids"][-1] = -3  # negative ids too
    shutil.rmtree(tmp / "data")
    save_rows(rows, tmp / "data")
    assert main(["train", str(cfg)]) == 2
    assert f"row {last} holds token id -3" in capsys.readouterr().err


def test_first_bad_token_over_many_chunks_and_rows():
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 50, size=5000)  # empty rows included
    values = rng.integers(0, 100, size=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    chunks = pa.chunked_array([column.slice(0, 1234), column.slice(1234)])  # a sliced chunk
    ds = datasets.Dataset(pa.table({"input_ids": chunks}))
    assert first_bad_token(ds, 100) == (-1, -1)
    target = 4321 if lengths[4321] else int(np.flatnonzero(lengths)[-1])
    values[offsets[target] + lengths[target] - 1] = 100
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    chunks = pa.chunked_array([column.slice(0, 1234), column.slice(1234)])
    ds = datasets.Dataset(pa.table({"input_ids": chunks}))
    assert first_bad_token(ds, 100) == (target, 100)
    assert first_bad_token(ds, 101) == (-1, -1)


def test_the_full_scan_covers_a_large_column(tmp_path):
    """10 M token ids in one column: the whole-column check runs over all of them (its speed is
    measured outside the tests: performance is not asserted in unit tests)."""
    import datasets
    import pyarrow as pa

    rows, length = 2500, 4096
    values = np.arange(rows * length, dtype=np.int64) % 1000
    offsets = np.arange(0, rows * length + 1, length, dtype=np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    datasets.Dataset(pa.table({"input_ids": column})).save_to_disk(str(tmp_path / "d"))
    (tmp_path / "d" / "stats.json").write_text("{}")
    ds = PreparedDir(tmp_path / "d").open()
    assert first_bad_token(ds, 1000) == (-1, -1)
    assert first_bad_token(ds, 999) == (0, 999)  # row 0 already holds the id 999
