"""Hand-made or damaged input files to ``bench project --calibrate`` and ``selftest
--model-config``: exit 2 naming the file, no traceback."""

from __future__ import annotations

import json

import pytest

from natscale.cli.main import main


@pytest.mark.parametrize(
    "records",
    [
        [{}],
        [{"spec": {"nodes": 1}}, {"spec": {"nodes": 2}}],
        ["not a record"],
    ],
)
def test_project_calibrate_with_malformed_records(tmp_path, capsys, records):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"records": records}))
    out = tmp_path / "results"
    assert main(["bench", "project", "--calibrate", str(sweep), "--results", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--calibrate {sweep}: not a sweep JSON of `natscale bench sweep`" in err
    assert not out.exists()


def test_project_calibrate_refuses_a_sweep_with_several_ranks_per_node(tmp_path, capsys):
    # the fit reads the 1-node step as communication-free: true only with one rank per node
    spec = {"model": "tiny", "precision": None, "device": "cpu", "grad_accum": 1}
    records = [
        {
            "spec": {**spec, "nodes": n, "world_size": 2 * n},
            "natscale": {"tokens_per_step": {"trained": 1000.0}, "step_time_s": {"median": n}},
            "environment": {"device": "cpu"},
        }
        for n in (1, 2)
    ]
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"records": records}))
    out = tmp_path / "results"
    assert main(["bench", "project", "--calibrate", str(sweep), "--results", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        f"--calibrate {sweep}: the 1-node run has 2 ranks; the fit needs one rank per node" in err
    )
    assert not out.exists()


def test_selftest_model_config_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_bytes(b'{"model_type": "llama", "name": "\xff\xfe"}')
    assert main(["selftest", "--model-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not a UTF-8 text file" in err


def test_an_unknown_attn_implementation_is_refused_before_any_work(tmp_path, capsys):
    # --attn had no choices: the data was prepared first, then the trainer refused a generated yaml
    work = tmp_path / "bench"
    with pytest.raises(SystemExit) as info:
        main(
            [
                "bench",
                "throughput",
                "--attn",
                "bogus",
                "--work-dir",
                str(work),
                "--results",
                str(tmp_path / "results"),
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --attn: invalid choice: 'bogus'" in err and "'flex_attention'" in err
    assert not work.exists() and not (tmp_path / "results").exists()
