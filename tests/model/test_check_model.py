"""`natscale check-model`: a shrunken random copy of a user's config, packed rows and logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natscale.cli.main import main
from natscale.model.logits import LogitTransform


def _config(tmp_path: Path, **fields) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(fields))
    return tmp_path / "m"


def test_a_family_natscale_trains_exactly(tmp_path, capsys):
    # a full-size config (Llama-3-8B-like): only the config is read, and the copy is tiny
    path = _config(tmp_path, model_type="llama", hidden_size=4096, intermediate_size=14336,
                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   vocab_size=128256)  # fmt: skip
    assert main(["check-model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "packed rows:" in out and ": OK" in out and "LEAKS" not in out
    assert out.strip().endswith("check-model: llama: natscale trains it exactly on packed rows")


def test_a_family_whose_packed_rows_leak_is_told_to_train_unpacked(tmp_path, capsys):
    assert main(["check-model", str(_config(tmp_path, model_type="mamba"))]) == 1
    out = capsys.readouterr().out
    assert "LEAKS" in out and "pack.algorithm=none" in out.splitlines()[-1]


def test_logits_natscale_would_get_wrong_are_reported(tmp_path, capsys, monkeypatch):
    # as if natscale did not know a factor the family applies to its logits
    monkeypatch.setattr("natscale.model.nat_lm.logit_transform", lambda c: LogitTransform(2.0))
    assert main(["check-model", str(_config(tmp_path, model_type="llama"))]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "do not train it" in out.splitlines()[-1]


@pytest.mark.parametrize("fields", [None, {"model_type": "t5"}])
def test_bad_input_is_exit_2(tmp_path, capsys, fields):
    path = tmp_path / "none" if fields is None else _config(tmp_path, **fields)
    assert main(["check-model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("natscale check-model: error: ") and str(path) in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"model_type": "llama", "vocab_size": "2048"}', "Field 'vocab_size' expected int"),
        ("[1, 2]", "a JSON list"),
        ('{"vocab_size": 2048}', "no 'model_type' key"),
    ],
)
def test_a_config_transformers_refuses_is_exit_2_naming_the_file(tmp_path, capsys, text, expected):
    # a wrongly typed field raised huggingface_hub's StrictDataclassFieldValidationError and a
    # top-level list a TypeError, both as tracebacks (train reads the config the same way)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(text)
    assert main(["check-model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(tmp_path / "m" / "config.json") in err
    assert expected in err
