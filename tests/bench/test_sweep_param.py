"""``bench sweep --param``: every value checked like the throughput option of the same name,
before any work (exit 2 naming the value, nothing written)."""

from __future__ import annotations

import pytest

from natscale.cli.main import main


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("world_size=0", "--param world_size=0: 0 is too small"),
        ("zero_stage=5", "--param zero_stage=5: not one of 1, 2, 3"),
        ("micro_batch_rows=1,0", "--param micro_batch_rows=0: 0 is too small"),
        ("steps=1.5", "--param steps=1.5: '1.5' is not a whole number"),
        ("precision=fp16", "--param precision=fp16: not one of fp32, bf16"),
        ("model=tiny,nonexist", "--param model=nonexist: not one of tiny"),
        ("activation_checkpointing=maybe", "--param activation_checkpointing=maybe: expected"),
    ],
)
def test_bad_param_value_is_refused_before_any_work(tmp_path, capsys, param, expected):
    _refused_before_any_work(tmp_path, capsys, ["--param", param], expected)


def test_a_world_size_that_does_not_split_over_the_nodes_is_refused_before_any_work(
    tmp_path, capsys
):
    # world_size=2 runs, then world_size=3 on 2 nodes used to fail only when its turn came
    args = ["--param", "world_size=2,3", "--nodes", "2"]
    _refused_before_any_work(tmp_path, capsys, args, "world size 3 is not a multiple of 2 node(s)")


def _refused_before_any_work(tmp_path, capsys, options: list[str], expected: str) -> None:
    work, results = tmp_path / "work", tmp_path / "results"
    args = ["bench", "sweep", *options, "--work-dir", str(work), "--results", str(results)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"natscale bench sweep: error: {expected}" in captured.err
    assert "point 1/" not in captured.err
    assert not work.exists() and not results.exists()


def test_good_param_values_keep_their_types():
    from natscale.cli.bench import _parse_param

    assert _parse_param("micro_batch_rows=1,2,4") == ("micro_batch_rows", [1, 2, 4])
    assert _parse_param("model=tiny") == ("model", ["tiny"])
    assert _parse_param("activation_checkpointing=false,true") == (
        "activation_checkpointing",
        [False, True],
    )
