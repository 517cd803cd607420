"""Prepare at scale: streamed input, packing per window, one Arrow shard per window, merging.

The example data cut to a few hundred trajectories, packed in windows of ``pack.window_examples``
so a run makes several shards in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from natscale.config.prepare import PrepareConfig, StrategyConfig
from natscale.data import nat, windows
from natscale.data.errors import DataError, Issues
from natscale.data.formats import iter_trajectories, load_trajectories, reader
from natscale.data.merge import MergeError, merge_prepared
from natscale.data.prepare import prepare
from natscale.data.prepared import PreparedDir
from natscale.data.prompts import TaskPrompt
from natscale.data.schema import ROW_FIELDS
from natscale.data.shards import ShardWriter
from natscale.train.rows import PreparedRowsReader

from .nat_test_data import REPO

N = 240  # trajectories: 3 windows of 100 (the last one short)


@pytest.fixture
def traj_file(tmp_path, example_data) -> Path:
    trajs = json.loads((example_data / "trajectories.json").read_text())[:N]
    path = tmp_path / "trajectories.json"
    path.write_text("[\n" + ",\n".join(json.dumps(t) for t in trajs) + "\n]\n")
    return path


def _config(traj: Path | list[Path], example_data: Path, **pack) -> PrepareConfig:
    paths = [str(p) for p in traj] if isinstance(traj, list) else [str(traj)]
    return PrepareConfig.model_validate(
        {
            "num_proc": 1,
            "sources": [
                {
                    "format": "nat",
                    "paths": paths,
                    "questions": [str(example_data / "questions.jsonl")],
                    "prompt": str(example_data / "prompt.json"),
                }
            ],
            "outcome": {"unfinished": "keep"},
            "render": {"tokenizer": str(REPO / "examples" / "tokenizer"), "template": "llama2"},
            "pack": {"max_seq_len": 1024, **pack},
        }
    )


def _rows(path: Path) -> list[dict]:
    reader_ = PreparedRowsReader(path)
    return [reader_.row(i) for i in range(len(reader_))]


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x[k], y[k]) for k in ROW_FIELDS) for x, y in zip(a, b, strict=True)
    )


def test_windows_make_shards_the_trainer_reads_as_one_dataset(traj_file, example_data, tmp_path):
    out = tmp_path / "sharded"
    res = prepare(_config(traj_file, example_data, window_examples=100), out, progress=False)
    names = sorted(p.name for p in out.glob("data-*.arrow"))
    assert names == [f"data-{k:05d}-of-00003.arrow" for k in range(3)]
    state = json.loads((out / "state.json").read_text())
    assert [f["filename"] for f in state["_data_files"]] == names
    assert not (out / ".shards").exists()
    pk = res.stats["packing"]
    assert [s["file"] for s in pk["shards"]] == names
    assert [s["examples"] for s in pk["shards"]] == [100, 100, 40]
    assert sum(s["rows"] for s in pk["shards"]) == pk["rows"] == PreparedDir(out).check_complete()
    assert pk["window_examples"] == 100 and res.stats["total"]["examples"] == N
    for s in pk["shards"]:
        assert s["rows"] >= s["lower_bound"] and 0 < s["efficiency"] <= 1
        assert s["gap"] == pytest.approx(s["rows"] / s["lower_bound"] - 1, abs=1e-6)
    # the global bound (all examples together) is at most the sum of the windows' bounds
    assert pk["lower_bound"] <= sum(s["lower_bound"] for s in pk["shards"])
    assert pk["non_pad_tokens"] == res.stats["total"]["tokens"]

    # shard k holds exactly the rows of a one-window prepare of the window's trajectories,
    # packed with seed + k: the trainer's reader sees the shards in order, row for row
    trajs = json.loads(traj_file.read_text())
    expected: list[dict] = []
    for k, (a, b) in enumerate([(0, 100), (100, 200), (200, N)]):
        part = tmp_path / f"window{k}.json"
        part.write_text(json.dumps(trajs[a:b]))
        cfg = _config(part, example_data).model_copy(update={"seed": 42 + k})
        single = prepare(cfg, tmp_path / f"single{k}", progress=False)
        assert len(list(single.out_dir.glob("data-*.arrow"))) == 1
        expected += _rows(single.out_dir)
    assert _same_rows(_rows(out), expected)


def test_one_window_is_the_global_packing(traj_file, example_data, tmp_path):
    whole = prepare(_config(traj_file, example_data), tmp_path / "a", progress=False)
    exact = prepare(
        _config(traj_file, example_data, window_examples=N), tmp_path / "b", progress=False
    )
    assert whole.stats["packing"]["shards"][0]["examples"] == N
    assert _same_rows(_rows(whole.out_dir), _rows(exact.out_dir))


def test_a_failure_in_a_later_window_leaves_nothing(traj_file, example_data, tmp_path, monkeypatch):
    trajs = json.loads(traj_file.read_text())
    trajs[230]["conversations"][0]["role"] = "bot"  # in the third window
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(trajs))
    written = []
    real_add = ShardWriter.add

    def add(self, rows):
        written.append(len(rows))
        return real_add(self, rows)

    monkeypatch.setattr("natscale.data.shards.ShardWriter.add", add)
    with pytest.raises(DataError, match=r"bad.json: record 230: .*unknown role 'bot'"):
        prepare(_config(bad, example_data, window_examples=100), tmp_path / "out", progress=False)
    assert len(written) == 2  # two shards were on disk when the error came
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))

    # a write that fails midway over an earlier output leaves that output as it was
    out = tmp_path / "kept"
    prepare(_config(traj_file, example_data), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def fail_second(self, rows):
        if self.rows:
            raise OSError("disk full")
        return real_add(self, rows)

    monkeypatch.setattr("natscale.data.shards.ShardWriter.add", fail_second)
    cfg = _config(traj_file, example_data, window_examples=100).model_copy(
        update={"overwrite": True}
    )
    with pytest.raises(OSError, match="disk full"):
        prepare(cfg, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob(".kept.*"))


def test_streamed_selection_equals_nat_select(example_data):
    trajs = load_trajectories(
        example_data / "trajectories.json",
        "nat",
        questions=example_data / "questions.jsonl",
        prompt=example_data / "prompt.json",
    )[:400]
    # every third trajectory of another task, whose prompt file words the question differently
    trajs = [dataclasses.replace(t, task="other") if i % 3 == 0 else t for i, t in enumerate(trajs)]
    prompts = {
        "other": TaskPrompt(templates={"success": "OK {question}", "failure": "KO {question}"})
    }
    failures = sum(t.outcome.success is False for t in trajs)
    for counts, sample in [(None, "random"), ({"success": 50, "failure": 90}, "random"),
                           ({"failure": 30}, "first"),
                           ({"failure": failures - 1}, "random")]:  # fmt: skip
        strategy = StrategyConfig(name="nat", counts=counts, sample=sample)
        want, report = nat.select(trajs, strategy, seed=7, prompts=prompts)
        counter = windows.Selector(strategy, prompts)
        for t in trajs:
            counter.classify(t)
        keep = windows.sampled_positions(counter.available, strategy, seed=7)
        sel = windows.Selector(strategy, prompts, keep)
        stream = (ex for ex in (sel.take(t) for t in trajs) if ex is not None)
        window = list(stream)  # data in one window
        got = [window[i] for i in windows.class_order(window)]
        assert [(e.traj.meta["record"], e.cls, e.query) for e in got] == [
            (e.traj.meta["record"], e.cls, e.query) for e in want
        ]
        assert sel.report() == report


def test_counts_sample_across_windows(traj_file, example_data, tmp_path):
    cfg = _config(traj_file, example_data, window_examples=50)
    cfg.strategy.counts = {"success": 40, "failure": 60}
    res = prepare(cfg, tmp_path / "o", progress=False)
    st = res.stats
    assert st["per_class"]["success"]["examples"] == 40
    assert st["per_class"]["failure"]["examples"] == 60
    assert st["sampling"]["success"]["kept"] == 40 and len(st["packing"]["shards"]) == 2


@pytest.mark.parametrize(
    "layout", ["json", "json_bom_spaced", "jsonl", "jsonl_as_json", "one_object", "blank_start"]
)
def test_large_files_stream_the_same_records(tmp_path, monkeypatch, example_data, layout):
    trajs = json.loads((example_data / "trajectories.json").read_text())[:50]
    path = tmp_path / ("t.jsonl" if layout == "jsonl" else "t.json")
    lines = "".join(json.dumps(t) + "\n\n" for t in trajs)
    text = {
        "json": json.dumps(trajs),
        "jsonl": lines,
        "jsonl_as_json": lines,
        "one_object": json.dumps(trajs[0], indent=2),
        "blank_start": " \n" * 300 + json.dumps(trajs),  # past the first block
    }.get(layout)
    if text is None:  # a BOM, a multi-line layout, a number at the end of the array
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps([*trajs, 12345], indent=3).encode())
    else:
        path.write_text(text)
    issues = [Issues(), Issues()]
    # read whole (in memory, as a file under STREAM_BYTES that is not a .json array is)
    whole = [(r.where, r.data) for r in reader._iter_whole(path, "skip", issues[0], None)]
    monkeypatch.setattr(reader, "STREAM_BYTES", 0)
    monkeypatch.setattr(reader, "_BLOCK", 97)  # records cross block ends
    streamed = [
        (r.where, r.data) for r in reader.iter_records(path, on_error="skip", issues=issues[1])
    ]
    assert streamed == whole and len(whole) == (1 if layout == "one_object" else 50)
    assert issues[0].as_dict() == issues[1].as_dict()


def test_streamed_json_errors_name_the_place(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    path.write_text('[{"a": 1},\n {"a": 2} {"a": 3}]')
    with pytest.raises(DataError, match=r"t.json: malformed JSON at line 2 column 11"):
        list(reader._iter_whole(path, "raise", None, None))  # read whole: json's own position
    monkeypatch.setattr(reader, "STREAM_BYTES", 0)
    monkeypatch.setattr(reader, "_BLOCK", 16)  # the error lies past the first block
    with pytest.raises(DataError, match=r"t.json: malformed JSON at line 2 column 11"):
        list(reader.iter_records(path))
    path.write_text('[{"a": 1},\n 7]')
    with pytest.raises(DataError, match=r"t.json: record 1: expected a JSON object, got int"):
        list(reader.iter_records(path))
    path.write_text('[{"a": 1}')
    with pytest.raises(DataError, match=r"t.json: malformed JSON at line 1 column 10"):
        list(reader.iter_records(path))
    path.write_bytes(b'[{"a": 1},\n {"a": "\xff"}]')
    with pytest.raises(DataError, match=r"t.json: bytes at offset 19 \(line 2\) are not UTF-8"):
        list(reader.iter_records(path))


def test_iter_trajectories_equals_load_trajectories(example_data):
    kw = dict(questions=example_data / "questions.jsonl", prompt=example_data / "prompt.json")
    path = example_data / "trajectories.json"
    lazy = iter_trajectories(path, "nat", **kw)
    assert not isinstance(lazy, list)
    assert list(lazy) == load_trajectories(path, "nat", **kw)


def test_merge_joins_node_outputs(traj_file, example_data, tmp_path):
    trajs = json.loads(traj_file.read_text())
    parts = []
    for k, (a, b) in enumerate([(0, 150), (150, N)]):
        p = tmp_path / f"node{k}.json"
        p.write_text(json.dumps(trajs[a:b]))
        parts.append(prepare(_config(p, example_data), tmp_path / f"part{k}", progress=False))
    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "natscale.cli", "merge", str(out)]
    proc = subprocess.run(
        [*cmd, *(str(p.out_dir) for p in parts)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"merge: 2 prepared folders, {N} trajectories -> {N} examples" in proc.stdout
    assert _same_rows(_rows(out), _rows(parts[0].out_dir) + _rows(parts[1].out_dir))
    st = json.loads((out / "stats.json").read_text())
    assert st["total"]["examples"] == N == st["trajectories"]["loaded"]
    assert st["packing"]["rows"] == sum(p.stats["packing"]["rows"] for p in parts)
    assert [s["file"] for s in st["packing"]["shards"]] == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]
    assert len(st["merged_from"]) == 2 and (out / "tokenizer" / "tokenizer.json").is_file()
    assert st["turns"] == "all" == parts[0].stats["turns"]
    # the global L2 bound of every example, from the rows' cu_seqlens
    both = _config([tmp_path / "node0.json", tmp_path / "node1.json"], example_data)
    assert (
        st["packing"]["lower_bound"]
        == prepare(both, tmp_path / "one", progress=False).stats["packing"]["lower_bound"]
    )

    # refused: an existing output (without --overwrite), a part prepared differently
    proc = subprocess.run(
        [*cmd, *(str(p.out_dir) for p in parts)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "already exists; remove it or pass --overwrite" in proc.stderr
    assert "overwrite: true" not in proc.stderr  # merge has no config to set it in
    other = prepare(
        _config(tmp_path / "node1.json", example_data, max_seq_len=2048),
        tmp_path / "other",
        progress=False,
    )
    with pytest.raises(MergeError, match=r"stats.json packing.max_seq_len is 2048 in .*other"):
        merge_prepared([parts[0].out_dir, other.out_dir], tmp_path / "m2")
    assert not (tmp_path / "m2").exists() and not list(tmp_path.glob(".m2.*"))
    # a setting the stats do not show: the marker's position (in prepare_config.yaml)
    cfg = _config(tmp_path / "node1.json", example_data)
    cfg.strategy.position = "prefix"
    prefix = prepare(cfg, tmp_path / "prefix", progress=False)
    with pytest.raises(MergeError, match=r"prepare_config.yaml strategy.position is 'prefix' in"):
        merge_prepared([parts[0].out_dir, prefix.out_dir], tmp_path / "m2")
    # the output inside a part: merge never writes into its parts
    inside = parts[0].out_dir / "sub"
    with pytest.raises(MergeError, match=r"inside .*part0, one of the parts"):
        merge_prepared([p.out_dir for p in parts], inside)
    assert not inside.exists()
    # a damaged stats.json or a missing tokenizer/ is named, not a traceback
    saved = (parts[1].out_dir / "stats.json").read_text()
    stats = json.loads(saved)
    del stats["sampling"]
    (parts[1].out_dir / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(MergeError, match=r"part1/stats.json: field 'sampling' is missing"):
        merge_prepared([p.out_dir for p in parts], tmp_path / "m3")
    (parts[1].out_dir / "stats.json").write_text(saved)
    info = parts[1].out_dir / "dataset_info.json"
    saved = info.read_text()
    info.write_text(saved[: len(saved) // 2])  # cut off
    with pytest.raises(MergeError, match=r"part1/dataset_info.json: unreadable"):
        merge_prepared([p.out_dir for p in parts], tmp_path / "m3")
    info.write_text(saved)
    (parts[1].out_dir / "tokenizer").rename(tmp_path / "tok")
    with pytest.raises(MergeError, match=r"part1: has no tokenizer/ folder"):
        merge_prepared([p.out_dir for p in parts], tmp_path / "m3")
    assert not (tmp_path / "m3").exists()


def test_merge_refuses_rows_given_twice(traj_file, example_data, tmp_path):
    """A merged folder merged again with one of its own parts would repeat that part's rows."""
    import shutil

    trajs = json.loads(traj_file.read_text())
    parts = []
    for k, (a, b) in enumerate([(0, 60), (60, 120)]):
        p = tmp_path / f"node{k}.json"
        p.write_text(json.dumps(trajs[a:b]))
        parts.append(prepare(_config(p, example_data), tmp_path / f"part{k}", progress=False))
    merged, stats = merge_prepared([p.out_dir for p in parts], tmp_path / "all")
    assert stats["merged_from"] == [str(p.out_dir.resolve()) for p in parts]
    # its data files are hard links of the parts' files
    with pytest.raises(MergeError, match=r"are the same file: .*would repeat those rows"):
        merge_prepared([merged, parts[0].out_dir], tmp_path / "again")
    # a copy (another filesystem: no links): its stats.json's merged_from names the part
    shutil.copytree(merged, tmp_path / "copy")
    with pytest.raises(MergeError, match=r"both hold the rows of .*part1"):
        merge_prepared([parts[1].out_dir, tmp_path / "copy"], tmp_path / "again")
    assert not (tmp_path / "again").exists()
    # the same input prepared twice (a node loop's $i left out), or a plain copy of a part
    again = prepare(
        _config(tmp_path / "node0.json", example_data), tmp_path / "twice", progress=False
    )
    shutil.copytree(parts[0].out_dir, tmp_path / "part0-copy")
    for other in (again.out_dir, tmp_path / "part0-copy"):
        with pytest.raises(MergeError, match=r"prepared from the same sources .* same rows"):
            merge_prepared([parts[0].out_dir, parts[1].out_dir, other], tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_trainer_preflight_reads_sharded_output(traj_file, example_data, tmp_path):
    from natscale.config.loader import load_config
    from natscale.config.run import RunConfig
    from natscale.data.prepared import PreparedDataError, first_bad_token
    from natscale.train.preflight import PreflightError, check_run
    from tests.train.train_fixtures import write_model_config, write_run_config

    out = tmp_path / "data"
    res = prepare(_config(traj_file, example_data, window_examples=100), out, progress=False)
    vocab = res.stats["tokenizer"]["vocab_size"]
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=out,
        model_config=write_model_config(tmp_path / "model", vocab=vocab),
        out=tmp_path / "run",
    )
    check_run(load_config(cfg, RunConfig), resume=False)  # the sharded folder passes

    # the vocabulary scan runs over every shard and names the row by its global index
    ds = PreparedDir(out).open()
    rows = _rows(out)
    top = max(int(r["input_ids"].max()) for r in rows)
    first = next(i for i, r in enumerate(rows) if r["input_ids"].max() == top)
    assert first_bad_token(ds, top) == (first, top)
    assert first_bad_token(ds, top + 1) == (-1, -1)

    # a damaged later shard is named before training starts
    last = out / "data-00002-of-00003.arrow"
    with last.open("r+b") as fh:
        fh.truncate(last.stat().st_size // 2)
    with pytest.raises(PreflightError, match=r"data-00002-of-00003\.arrow: truncated or damaged"):
        check_run(load_config(cfg, RunConfig), resume=False)
    with pytest.raises(PreparedDataError, match=r"data-00002-of-00003\.arrow"):
        PreparedRowsReader(out)


def test_merge_keeps_every_part_s_tools_once():
    from natscale.data.merge import offered_tools

    def tool(name: str, text: str) -> dict:
        return {"type": "function", "function": {"name": name, "description": text}}

    parts = [{"tools": [tool("calc", "a"), tool("web", "b")]}, {}, {"tools": [tool("calc", "c")]}]
    parts.append({"tools": [tool("shell", "d")]})
    assert offered_tools(parts) == [tool("calc", "a"), tool("web", "b"), tool("shell", "d")]
    assert offered_tools([{}, {}]) == []
