"""What a source directory stands for, and text that is not text (a lone UTF-16 surrogate)."""

import json

import pytest

from natscale.atomic import MARKER
from natscale.data.errors import DataError, Issues
from natscale.data.formats import reader


def _records(path, **kw):
    return [(r.file.rsplit("/", 1)[-1], r.where) for r in reader.iter_records(path, **kw)]


def test_a_directory_skips_hidden_files_and_natscale_outputs(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.jsonl").write_text('{"id": 1}\n')
    (data / "sub" / "b.json").write_text('[{"id": 2}]')
    # a notebook's copy, a macOS resource fork, a natscale output written under the source
    (data / ".ipynb_checkpoints").mkdir()
    (data / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_text('{"id": 1}\n')
    (data / "._a.jsonl").write_bytes(b"\x00\x05\x16\x07")
    (data / "prep" / "tokenizer").mkdir(parents=True)
    (data / "prep" / "stats.json").write_text("{}")
    (data / "prep" / "tokenizer" / "tokenizer.json").write_text("{}")
    (data / "prep" / MARKER).write_text(json.dumps({"kind": "prepared", "version": 2}))
    (data / "sub" / "loop").symlink_to(data)  # a link back up is read once, not forever
    assert reader.expand_paths(data) == [data / "a.jsonl", data / "sub" / "b.json"]
    # a file named explicitly is read even if hidden
    assert reader.expand_paths([data / "._a.jsonl"]) == [data / "._a.jsonl"]
    only_hidden = tmp_path / "h"
    (only_hidden / ".cache").mkdir(parents=True)
    (only_hidden / ".cache" / "x.json").write_text("[]")
    with pytest.raises(DataError, match="directory has no data files"):
        reader.expand_paths(only_hidden)


def test_a_directory_skips_eval_outputs_and_training_runs_but_a_named_eval_is_its_episodes(
    tmp_path,
):
    """An eval written under a source directory came back as training data (its episodes, and
    its run.json and summary.json as bad records); a training run's ds_config.json and
    metrics.jsonl failed as records."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": 1}\n')
    ev = data / "eval_round1"
    ev.mkdir()
    for name, text in (("run.json", "{}"), ("summary.json", "{}"), ("episodes.jsonl", "{}\n")):
        (ev / name).write_text(text)
    run = data / "run1"
    (run / "model_config").mkdir(parents=True)
    (run / "model_config" / MARKER).write_text(json.dumps({"kind": "model-config"}))
    (run / "ds_config.json").write_text("{}")
    old_run = data / "run0"  # before the marker: its metrics
    old_run.mkdir()
    (old_run / "metrics.jsonl").write_text('{"step": 1}\n')
    (old_run / "config.yaml").write_text("{}")
    assert reader.expand_paths(data) == [data / "a.jsonl"]
    assert reader.expand_paths(ev) == [ev / "episodes.jsonl"]  # named: its episodes
    (data / "a.jsonl").unlink()
    with pytest.raises(
        DataError, match=r"natscale outputs are not read: .*eval_round1 \(eval output\)"
    ):
        reader.expand_paths(data)
    # a user's folder that merely holds a checkpoints/ or a run.json is read
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "run.json").write_text("{}")
    assert reader.expand_paths(mine) == [mine / "run.json"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_is_a_record_error(tmp_path, suffix):
    good = {"id": "ok", "turns": [{"content": "an emoji \U0001f600 whole"}]}
    lines = [
        '{"id": "cut", "turns": [{"content": "an emoji cut \\ud83d"}]}',
        json.dumps(good),  # a surrogate pair is one character: fine
    ]
    path = tmp_path / f"t{suffix}"
    path.write_text("\n".join(lines) + "\n" if suffix == ".jsonl" else f"[{','.join(lines)}]")
    where = "line 1" if suffix == ".jsonl" else "record 0"
    with pytest.raises(DataError, match=rf"{where}: field 'turns\[0\]\.content': .*lone UTF-16 "):
        list(reader.iter_records(path))
    issues = Issues()
    kept = list(reader.iter_records(path, on_error="skip", issues=issues))
    assert [r.data for r in kept] == [good]
    assert issues.as_dict() == {"bad_text": 1}


def test_a_lone_surrogate_in_a_streamed_array_and_a_key(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_BLOCK", 16)  # the record spans several buffer fills
    path = tmp_path / "big.json"
    path.write_text('[{"id": 1, "text": "fine"}, {"id": 2, "meta": {"k\\udc00": 1}}]')
    with pytest.raises(DataError, match=r"record 1: field 'meta\.k\\udc00': .*\(\\udc00\)"):
        list(reader.iter_records(path))


def test_a_file_listed_twice_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DataError, match=r"a\.jsonl: read twice: .* are the same file"):
        reader.expand_paths([tmp_path / "d", tmp_path / "d" / "a.jsonl"])
    with pytest.raises(DataError, match="read twice"):
        reader.expand_paths([tmp_path / "d" / "a.jsonl", tmp_path / "d" / ".." / "d" / "a.jsonl"])


@pytest.mark.parametrize(
    "name, stream_bytes", [("t.jsonl", None), ("t.jsonl", 1), ("t.json", None)]
)
def test_streamed_jsonl_errors_name_their_line(tmp_path, monkeypatch, name, stream_bytes):
    """Read whole, streamed (a large .jsonl) or as JSONL under a .json name (always streamed),
    a bad line is named by its own number, not as line 1."""
    if stream_bytes is not None:
        monkeypatch.setattr(reader, "STREAM_BYTES", stream_bytes)
    path = tmp_path / name
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3\n[1, 2]\n\xff\n{"t": "\\ud83d"}\n{"a": 7}\n')
    issues = Issues()
    kept = list(reader.iter_records(path, on_error="skip", issues=issues))
    assert [(r.where, r.data) for r in kept] == [
        ("line 1", {"a": 1}),
        ("line 2", {"a": 2}),
        ("line 7", {"a": 7}),
    ]
    assert issues.total() == 4
    found = [m for ms in issues.examples.values() for m in ms]
    for line in (3, 4, 5, 6):
        assert sum(f"line {line}:" in m for m in found) == 1, (line, found)
    with pytest.raises(DataError, match=r"t\.jsonl?: line 3: malformed JSON at column"):
        list(reader.iter_records(path))
