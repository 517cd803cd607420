"""`natscale inspect`: prepared examples decoded, with exactly the trained tokens marked."""

import numpy as np
import pytest

from natscale.cli.main import main
from natscale.data.inspect import decode_runs, segments
from natscale.data.prepare import prepare
from natscale.data.prepared import PreparedDir
from natscale.data.render import load_tokenizer

from .test_prepare import _config


@pytest.fixture
def prepared(tokenizer_dir, nat_files, tmp_path):
    out = tmp_path / "data"
    prepare(_config(tokenizer_dir, nat_files), out, progress=False)
    return out


def test_the_marked_text_is_what_the_rows_train(prepared):
    data = PreparedDir(prepared)
    rows = data.open().with_format("numpy")
    tok = load_tokenizer(data.tokenizer)
    found = list(segments(rows, tok, data.class_names(0), range(len(rows))))
    assert sorted(s.class_name for s in found) == ["failure", "success"]
    for seg in found:
        row = rows[seg.row]
        a, b = (int(x) for x in row["cu_seqlens"][seg.index : seg.index + 2])
        ids = row["input_ids"][a:b].tolist()
        trained = [row["targets"][t - 1] != -100 for t in range(a + 1, b)]
        assert seg.trained == sum(trained) and seg.tokens == b - a
        # the runs join up to the whole decoded segment, and the trained runs are the tokens
        # the targets name, decoded
        assert "".join(t for t, _ in seg.parts) == tok.decode(ids, skip_special_tokens=False)
        got = "".join(t for t, on in seg.parts if on)
        assert got.replace(" ", "") == tok.decode(
            [i for i, on in zip(ids[1:], trained, strict=True) if on], skip_special_tokens=False
        ).replace(" ", "")
    success = next(s for s in found if s.class_name == "success")
    assert [t for t, on in success.parts if on] == [" Thought: add.\nAction: calculate[2 + 4] </s>",
                                                   " Thought: done.\nAction: finish[6] </s>"]  # fmt: skip


def test_decode_runs_keeps_characters_split_across_runs(tokenizer):
    ids = tokenizer.encode("naïve café", add_special_tokens=False)
    flags = np.array([i % 2 == 0 for i in range(len(ids))])
    parts = decode_runs(tokenizer, ids, flags)
    assert "".join(t for t, _ in parts) == tokenizer.decode(ids, skip_special_tokens=False)
    assert "\ufffd" not in "".join(t for t, _ in parts)
    assert len(parts) < len(ids)  # the runs inside the split character are given to the next


def test_cli_marks_filters_and_refuses_bad_input(prepared, capsys, tmp_path):
    assert main(["inspect", str(prepared), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "⟦ Thought: add.\nAction: calculate[2 + 4] </s>⟧" in out
    assert "Question: What is 2 + 4?" in out and "⟦ Question" not in out
    assert out.strip().splitlines()[-1].startswith("inspect: 2 examples from 1 of 1 rows")

    assert main(["inspect", str(prepared), "--class", "failure", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert ": failure, weight 1," in out and ": success" not in out
    assert "\x1b[32m Thought: done.\nAction: finish[7] </s>\x1b[0m" in out

    assert main(["inspect", str(prepared), "--rows", "5"]) == 2
    assert "--rows 5: " in (err := capsys.readouterr().err) and "has rows 0..0" in err
    assert main(["inspect", str(prepared), "--class", "nope"]) == 2
    assert "has the classes ['success', 'failure']" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "natscale inspect: error: " in capsys.readouterr().err


def test_prepare_limit_reads_the_first_trajectories(tokenizer_dir, nat_files, tmp_path, capsys):
    import json

    cfg = tmp_path / "prepare.json"
    cfg.write_text(json.dumps(_config(tokenizer_dir, nat_files).model_dump(mode="json")))
    out = tmp_path / "trial"
    assert main(["prepare", str(cfg), "--out", str(out), "--limit", "1", "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["trajectories"]["loaded"] == 1 and stats["total"]["examples"] == 1
    assert "limit: 1" in (out / "prepare_config.yaml").read_text()  # a trial says so
    assert main(["inspect", str(out), "--color", "never"]) == 0
    assert "inspect: 1 example from 1 of 1 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(cfg), "--out", str(tmp_path / "x"), "--limit", "0"])
    assert exc.value.code == 2 and "--limit: 0 is too small" in capsys.readouterr().err
