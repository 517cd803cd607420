"""`natscale prepare` end to end: output layout, stats, atomicity, errors, determinism, CLI."""

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import yaml

from natscale.cli.main import main
from natscale.config.loader import load_config
from natscale.config.prepare import PrepareConfig
from natscale.data.errors import DataError
from natscale.data.prepare import prepare
from natscale.data.schema import ROW_FIELDS, validate_row

from .nat_test_data import NAT_TRAJ, write_json


def _config(tokenizer_dir, files, **over) -> PrepareConfig:
    traj, questions, prompt = files
    data = {
        "sources": [
            {
                "format": "nat",
                "paths": [str(traj)],
                "questions": [str(questions)],
                "prompt": str(prompt),
            }
        ],
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        "pack": {"max_seq_len": 512},
    }
    for key, value in over.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return PrepareConfig.model_validate(data)


def test_output_layout_rows_and_stats(tokenizer_dir, nat_files, tmp_path):
    out = tmp_path / "out"
    res = prepare(_config(tokenizer_dir, nat_files), out, progress=False)
    assert res.out_dir == out.resolve()
    assert {p.name for p in out.iterdir()} >= {"stats.json", "tokenizer", "prepare_config.yaml"}
    ds = datasets.load_from_disk(str(out)).with_format("numpy")
    assert set(ds.column_names) == set(ROW_FIELDS) | {"num_tokens", "num_trained"}
    for i, row in enumerate(ds):
        validate_row(row, max_seq_len=512, where=f"row {i}")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["classes"] == ["success", "failure"]
    assert (
        stats["per_class"]["success"]["examples"] == 1 == stats["per_class"]["failure"]["examples"]
    )
    assert stats["total"]["tokens"] == int(sum(ds["num_tokens"]))
    assert stats["total"]["trained_tokens"] == int(sum(ds["num_trained"]))
    assert stats["packing"]["rows"] == len(ds) == 1
    # the trainer's view: the saved tokenizer decodes the rows; markers are in the question turns
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    row = ds[0]
    cls, cu = row["segment_class"], row["cu_seqlens"]
    for k in range(len(cls)):
        text = tok.decode(row["input_ids"][cu[k] : cu[k + 1]])
        marker = (
            "Solve the problem correctly." if cls[k] == 0 else "But incorrectly solve the problem."
        )
        assert f"Question: What is 2 + 4?. {marker} [/INST]" in text
        assert "Episode finished" not in text  # untrained tail trimmed
        tgt = row["targets"][cu[k] : cu[k + 1]]
        trained = tok.decode(tgt[tgt != -100])
        assert trained.startswith("Thought: add.") and "Observation" not in trained
    resolved = load_config(out / "prepare_config.yaml", PrepareConfig)
    assert resolved.output == str(out)


def test_same_output_for_any_num_proc(tokenizer_dir, tmp_path):
    trajs = []
    for i in range(300):
        rec = json.loads(json.dumps(NAT_TRAJ)) | {"id": f"q{i}", "question": f"What is {i} + 4?"}
        rec["info"]["reward"] = i % 3 == 0
        rec["conversations"] = rec["conversations"] * (1 + i % 5)
        trajs.append(rec)
    path = write_json(tmp_path / "t.json", trajs)
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": "nat", "paths": [str(path)]}],
            "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
            "pack": {"max_seq_len": 1024},
            "strategy": {"counts": {"failure": 150}},
        }
    )
    one = prepare(cfg, tmp_path / "one", progress=False)
    two = prepare(cfg.model_copy(update={"num_proc": 2}), tmp_path / "two", progress=False)
    a, b = datasets.load_from_disk(str(one.out_dir)), datasets.load_from_disk(str(two.out_dir))
    assert a[:] == b[:]
    assert one.stats["per_class"]["failure"]["examples"] == 150
    assert one.stats["sampling"]["failure"]["available"] == 200


def test_truncate_drop_and_counts(tokenizer_dir, nat_files, tmp_path):
    full = prepare(_config(tokenizer_dir, nat_files), tmp_path / "f", progress=False).stats
    shortest = min(c["tokens"] for c in full["per_class"].values())
    cfg = _config(tokenizer_dir, nat_files, **{"pack.max_seq_len": shortest - 5})
    st = prepare(cfg, tmp_path / "t", progress=False).stats
    assert st["truncated"]["examples"] == 2 and st["truncated"]["tokens"] >= 10
    assert st["total"]["tokens"] == full["total"]["tokens"] - st["truncated"]["tokens"]
    drop = cfg.model_copy(update={"pack": cfg.pack.model_copy(update={"overlong": "drop"})})
    with pytest.raises(
        DataError, match=r"no example left to pack: 2 trajectories read, dropped \{'too_long': 2"
    ):
        prepare(drop, tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


def test_skip_reasons_land_in_stats_and_raise_writes_nothing(tokenizer_dir, nat_files, tmp_path):
    traj = nat_files[0]
    records = json.loads(traj.read_text())
    bad = json.loads(json.dumps(records[0])) | {"id": "nobody"}
    unfinished = json.loads(json.dumps(records[1]))
    unfinished["info"].update(finished=False, pred=None)
    traj.write_text(json.dumps([*records, bad, {"id": "q1", "conversations": []}, unfinished]))
    cfg = _config(tokenizer_dir, nat_files, on_error="skip", **{"outcome.unfinished": "skip"})
    st = prepare(cfg, tmp_path / "ok", progress=False).stats
    assert st["skipped"] == {"empty_conversation": 1, "unfinished": 1, "unknown_question_id": 1}
    assert st["trajectories"] == {"loaded": 3, "unfinished": 1, "labelled": 2}
    assert "record 2" in st["skipped_examples"]["unknown_question_id"][0]
    with pytest.raises(DataError, match=r"trajectories.json: record 2: field 'id': id 'nobody'"):
        prepare(cfg.model_copy(update={"on_error": "raise"}), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


def test_existing_output_and_failure_while_writing(tokenizer_dir, nat_files, tmp_path, monkeypatch):
    cfg = _config(tokenizer_dir, nat_files)
    out = tmp_path / "out"
    prepare(cfg, out, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare(cfg, out, progress=False)
    before = (out / "stats.json").read_text()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("natscale.data.output.write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare(cfg.model_copy(update={"overwrite": True}), out, progress=False)
    assert (out / "stats.json").read_text() == before  # the old output is untouched
    assert not list(tmp_path.glob(".out.*"))


def test_cli_summary_line_and_errors(tokenizer_dir, nat_files, tmp_path, capsys):
    traj, questions, prompt = nat_files
    cfg = {
        "sources": [
            {
                "format": "nat",
                "paths": [str(traj)],
                "questions": [str(questions)],
                "prompt": str(prompt),
            }
        ],
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
    }
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "natscale.cli", "prepare", str(path), "--out", str(tmp_path / "o")]
    proc = subprocess.run(
        [*cmd, "--set", "pack.max_seq_len=256", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("prepare: 2 trajectories -> 2 examples (success 1, failure 1)")
    assert "rows of 256" in last
    args = cmd[3:]  # the same command in-process: bad input exits 2 with one readable line
    assert main([*args, "--set", "pack.algo=x"]) == 2
    assert "pack.algo: unknown key" in capsys.readouterr().err
    assert main(args) == 2
    assert "exists; remove it or set overwrite" in capsys.readouterr().err


def test_masks_survive_to_rows(tokenizer_dir, nat_files, tmp_path):
    res = prepare(_config(tokenizer_dir, nat_files), tmp_path / "o", progress=False)
    ds = datasets.load_from_disk(str(res.out_dir)).with_format("numpy")
    tgt = np.concatenate(list(ds["targets"]))
    assert (tgt != -100).sum() == res.stats["total"]["trained_tokens"]


def _openai_records(n: int) -> list[dict]:
    recs = []
    for i in range(n):
        recs.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} + 1?"},
                    {"role": "assistant", "content": f"Action: finish[{i + 1}]"},
                ],
                "answer": str(i + 1),
                "score": [0.0, 0.3, 0.7, 1.0][i % 4],
            }
        )
    return recs


def test_openai_nat_fine_chatml_through_prepare(tokenizer_dir, tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _openai_records(8)))
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": "openai", "paths": [str(path)]}],
            "outcome": {"success": "em", "score": "field"},
            "strategy": {"name": "nat-fine", "weights": {"totally_incorrect": 0.25}},
            "render": {
                "tokenizer": str(tokenizer_dir),
                "template": "chatml",
                "add_missing_special_tokens": True,
            },
            "pack": {"max_seq_len": 256},
        }
    )
    res = prepare(cfg, tmp_path / "out", progress=False)
    st = res.stats
    assert st["classes"] == ["correct", "mostly_correct", "mostly_incorrect", "totally_incorrect"]
    assert [c["examples"] for c in st["per_class"].values()] == [2, 2, 2, 2]
    assert st["tokenizer"]["added_tokens"] == ["<|im_start|>", "<|im_end|>"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(res.out_dir / "tokenizer"))
    assert tok.convert_tokens_to_ids("<|im_end|>") == st["tokenizer"]["vocab_size"] - 1
    ds = datasets.load_from_disk(str(res.out_dir)).with_format("numpy")
    weights = {
        int(c): float(w)
        for r in ds
        for c, w in zip(r["segment_class"], r["segment_weight"], strict=True)
    }
    assert weights == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.25}


def test_render_errors_are_counted_or_raised(tokenizer_dir, tmp_path):
    recs = _openai_records(3)
    recs[1]["messages"].append({"role": "system", "content": "late system message"})
    recs[1]["messages"].append({"role": "assistant", "content": "x"})
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    data = {
        "sources": [{"format": "openai", "paths": [str(path)]}],
        "outcome": {"success": "em"},
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        "on_error": "skip",
    }
    st = prepare(PrepareConfig.model_validate(data), tmp_path / "a", progress=False).stats
    assert st["skipped"] == {"render_error": 1} and st["total"]["examples"] == 2
    with pytest.raises(
        DataError, match=r"o.jsonl: line 2: llama2: a system message is only allowed"
    ):
        prepare(
            PrepareConfig.model_validate(data | {"on_error": "raise"}),
            tmp_path / "b",
            progress=False,
        )


def _segments(out_dir) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every packed example of a dataset as (ids, targets), sorted."""
    ds = datasets.load_from_disk(str(out_dir)).with_format("numpy")
    segs = []
    for row in ds:
        cu = row["cu_seqlens"]
        for k in range(len(cu) - 1):
            a, b = int(cu[k]), int(cu[k + 1])
            segs.append(
                (tuple(row["input_ids"][a:b].tolist()), tuple(row["targets"][a:b].tolist()))
            )
    return sorted(segs)


@pytest.mark.parametrize("algorithm", ["bfd", "none"])
def test_a_render_chunk_with_nothing_kept_shifts_no_example(tokenizer_dir, tmp_path, algorithm):
    """The first render chunk (128 examples) is all too long and dropped: the short examples
    after it are packed whole, each with its own tokens, as when read alone."""
    long = [
        {
            "messages": [
                {"role": "user", "content": f"long {i}"},
                {"role": "assistant", "content": "word " * 300},
            ]
        }
        for i in range(128)
    ]
    short = [
        {
            "messages": [
                {"role": "user", "content": f"short question {i}"},
                {"role": "assistant", "content": f"answer number {i} " * (i + 1)},
            ]
        }
        for i in range(3)
    ]

    def run(name: str, recs: list[dict]):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        cfg = PrepareConfig.model_validate(
            {
                "sources": [{"format": "openai", "paths": [str(path)]}],
                "outcome": {"success": "all"},
                "strategy": {"name": "vanilla"},
                "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
                "pack": {"max_seq_len": 256, "overlong": "drop", "algorithm": algorithm},
                "num_proc": 1,
            }
        )
        return prepare(cfg, tmp_path / name, progress=False)

    alone, after = run("alone", short), run("after", long + short)
    assert after.stats["dropped"]["too_long"] == 128
    assert after.stats["total"] == alone.stats["total"]
    assert after.stats["total"]["examples"] == 3
    segs = _segments(after.out_dir)
    assert all(len(ids) > 0 for ids, _ in segs)
    assert segs == _segments(alone.out_dir)
