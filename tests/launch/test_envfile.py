"""The variables every rank gets, and the .deepspeed_env file natscale writes and re-reads."""

from __future__ import annotations

import pytest

from natscale.launch.envfile import (
    MARK,
    build_env,
    check_env_file_location,
    check_file_values,
    env_file_text,
    parse_env_lines,
    python_bin,
    read_user_env_file,
    source_root,
    write_env_file,
)

ENVIRON = {
    "PATH": "/usr/bin:/bin",
    "PYTHONPATH": "/extra",
    "NCCL_DEBUG": "INFO",
    "GLOO_SOCKET_IFNAME": "eth0",
    "HF_HOME": "/shared/hf",
    "TORCH_EXTENSIONS_DIR": "/shared/ext",
    "DS_ACCELERATOR": "cpu",
    "HOME": "/root",  # not for the ranks
    "SECRET_TOKEN": "x",  # never copied unless asked for
}


def _build(**kw):
    args = dict(user_file={}, ifname=None, explicit=[], master_addr="node-a", master_port=29500)
    args.update(kw)
    return build_env(ENVIRON, **args)


def test_copied_computed_and_master_variables():
    spec = _build()
    assert spec.values == {
        "DS_ACCELERATOR": "cpu",
        "GLOO_SOCKET_IFNAME": "eth0",
        "HF_HOME": "/shared/hf",
        "MASTER_ADDR": "node-a",
        "MASTER_PORT": "29500",
        "NCCL_DEBUG": "INFO",
        "PATH": f"{python_bin()}:/usr/bin:/bin",
        "PYTHONPATH": f"{source_root()}:/extra",
        "TORCH_EXTENSIONS_DIR": "/shared/ext",
    }
    assert spec.source["NCCL_DEBUG"] == "this node" and spec.source["MASTER_ADDR"] == "master"


def test_precedence_user_file_then_ifname_then_env():
    spec = _build(
        user_file={"NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "eth9", "MY_VAR": "1"},
        ifname="ib0",
        explicit=["NCCL_DEBUG=TRACE", "SECRET_TOKEN", "EMPTY="],
    )
    assert spec.values["MY_VAR"] == "1" and spec.source["MY_VAR"] == "existing env file"
    assert spec.values["GLOO_SOCKET_IFNAME"] == "ib0" == spec.values["NCCL_SOCKET_IFNAME"]
    assert spec.values["NCCL_DEBUG"] == "TRACE" and spec.values["SECRET_TOKEN"] == "x"
    assert spec.values["EMPTY"] == ""


@pytest.mark.parametrize(
    ("explicit", "message"),
    [
        (["1BAD=x"], "expected KEY=VALUE or KEY"),
        (["NOT_SET_HERE"], "--env NOT_SET_HERE: not set on this node"),
        (["MASTER_PORT=1234"], "contradicts the launch's 29500; use --master-port"),
    ],
)
def test_bad_env_items(explicit, message):
    with pytest.raises(ValueError, match=message):
        _build(explicit=explicit)


def test_a_line_break_is_refused_only_where_an_env_file_is_written(tmp_path):
    # no-ssh and single-node launches set the variables on the deepspeed process: any value goes
    spec = build_env(
        {**ENVIRON, "NATSCALE_HOSTS": "node-a\nnode-b"},
        user_file={},
        ifname=None,
        explicit=["X=a\rb"],
        master_addr="node-a",
        master_port=29500,
    )
    assert spec.values["NATSCALE_HOSTS"] == "node-a\nnode-b"
    path = tmp_path / ".deepspeed_env"
    with pytest.raises(ValueError, match=r"NATSCALE_HOSTS: a value with a line break .*this node"):
        check_file_values(spec, path)
    with pytest.raises(ValueError, match="a value with a line break"):
        write_env_file(path, spec)
    assert not path.exists()


def test_written_file_is_regenerated_but_a_hand_edited_one_is_merged(tmp_path):
    path = tmp_path / ".deepspeed_env"
    spec = _build()
    write_env_file(path, spec)
    text = path.read_text()
    assert text == env_file_text(spec) and text.splitlines()[-1].startswith(f"{MARK}=")
    # DeepSpeed's own reader: KEY=VALUE on every line
    assert all("=" in line for line in text.splitlines())
    assert read_user_env_file(path) == {}  # ours, untouched
    path.write_text(text.replace("NCCL_DEBUG=INFO", "NCCL_DEBUG=WARN"))
    assert read_user_env_file(path)["NCCL_DEBUG"] == "WARN"  # edited by hand: kept
    path.write_text("FOO=bar\n")
    assert read_user_env_file(path) == {"FOO": "bar"}
    path.write_text("# comment\nFOO=bar\n")
    with pytest.raises(ValueError, match=r"\.deepspeed_env:1: '# comment' is not KEY=VALUE"):
        read_user_env_file(path)


def test_a_users_variables_survive_every_later_launch(tmp_path):
    """Launch 1 merges a user's file and overwrites it with natscale's; launch 2 must not
    regenerate the user's variables away (they used to vanish from every rank)."""
    path = tmp_path / ".deepspeed_env"
    path.write_text("NCCL_IB_HCA=mlx5_0\nNCCL_DEBUG=WARN\n")
    for _ in range(3):  # each launch reads the file, then writes it
        spec = _build(user_file=read_user_env_file(path))
        assert spec.values["NCCL_IB_HCA"] == "mlx5_0" and spec.values["NCCL_DEBUG"] == "WARN"
        write_env_file(path, spec)
    assert path.read_text().splitlines()[-1].endswith(":NCCL_DEBUG,NCCL_IB_HCA")
    # a variable natscale copied from this node is not kept: it follows this node's value
    assert read_user_env_file(path) == {"NCCL_IB_HCA": "mlx5_0", "NCCL_DEBUG": "WARN"}
    # the kept list itself is part of the hash: editing it by hand makes the file "yours"
    path.write_text(path.read_text().replace(":NCCL_DEBUG,NCCL_IB_HCA", ":NCCL_IB_HCA"))
    assert "PATH" in read_user_env_file(path)


def test_a_one_off_override_of_a_users_variable_does_not_outlive_its_launch(tmp_path):
    """--ifname / --env replace a user's value for one launch; the launches after it get the
    user's own value back (the mark used to keep the replaced one for good)."""
    path = tmp_path / ".deepspeed_env"
    path.write_text("NCCL_SOCKET_IFNAME=ib0\nNCCL_DEBUG=WARN\nMY_VAR=a,b:c\n")
    launches = [
        dict(ifname="eth0", explicit=["NCCL_DEBUG=TRACE"]),
        dict(explicit=["MY_VAR=other"]),
        {},
        {},
    ]
    expected = [
        ("eth0", "TRACE", "a,b:c"),
        ("ib0", "WARN", "other"),
        ("ib0", "WARN", "a,b:c"),
        ("ib0", "WARN", "a,b:c"),
    ]
    for kw, want in zip(launches, expected, strict=True):
        spec = _build(user_file=read_user_env_file(path), **kw)
        got = tuple(spec.values[k] for k in ("NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "MY_VAR"))
        assert got == want, kw
        write_env_file(path, spec)
        lines = path.read_text().splitlines()
        assert all("=" in line for line in lines)  # still a file DeepSpeed reads
        assert not any(c in lines[-1].partition("=")[2] for c in " \"'$;")  # nothing it quotes
    assert read_user_env_file(path) == {
        "NCCL_SOCKET_IFNAME": "ib0",
        "NCCL_DEBUG": "WARN",
        "MY_VAR": "a,b:c",
    }
    # the saved values are part of the hash: a hand-edited mark makes the file "yours"
    spec = _build(user_file=read_user_env_file(path), ifname="eth0")
    write_env_file(path, spec)
    text = path.read_text()
    assert read_user_env_file(path)["NCCL_SOCKET_IFNAME"] == "ib0"
    path.write_text(text[:-3] + "xx\n")
    assert read_user_env_file(path)["NCCL_SOCKET_IFNAME"] == "eth0" and "PATH" in (
        read_user_env_file(path)
    )


def test_the_home_directorys_env_file_is_refused(tmp_path):
    """DeepSpeed reads ~/.deepspeed_env for every job the user launches: launching from $HOME
    must not write this launch's variables there."""
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    environ = {"HOME": str(home)}
    with pytest.raises(ValueError, match=r"home directory.*Launch from a project folder"):
        check_env_file_location(home / ".deepspeed_env", environ)
    with pytest.raises(ValueError, match="home directory"):
        check_env_file_location(home / "project" / ".." / ".deepspeed_env", environ)
    check_env_file_location(home / "project" / ".deepspeed_env", environ)


def test_a_linked_env_file_is_refused_and_left_a_link(tmp_path):
    """A `.deepspeed_env` linked to a shared file was replaced by a plain file on launch."""
    shared = tmp_path / "shared_env"
    shared.write_text("MY_SHARED_VAR=1\n")
    link = tmp_path / "project" / ".deepspeed_env"
    link.parent.mkdir()
    link.symlink_to(shared)
    with pytest.raises(ValueError, match=r"is a link to .*shared_env.*cp --remove-destination"):
        check_env_file_location(link, {"HOME": str(tmp_path / "home")})
    assert link.is_symlink() and shared.read_text() == "MY_SHARED_VAR=1\n"


def test_parse_env_lines_splits_at_the_first_equals():
    assert parse_env_lines("A=b=c\nB= d \n", "f") == {"A": "b=c", "B": "d"}
