"""`natscale launch --check` / `--dry-run` refusing bad setups, each with what to do.

The CLI runs in this process (DeepSpeed is imported once); network probes go to 127.0.0.0/8 only.
"""

from __future__ import annotations

import os
import re
import socket

import pytest

from natscale.cli.main import main
from natscale.train.dist import free_port


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """Run `natscale launch ARGS` in tmp_path with a controlled environment: (code, out, err)."""
    monkeypatch.chdir(tmp_path)
    # no ~/.deepspeed_env of the machine; not the launch folder (natscale refuses to write there)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["launch", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _hostfile(tmp_path, text: str) -> str:
    path = tmp_path / "hosts"
    path.write_text(text)
    return str(path)


def test_pdsh_without_reachable_ssh(cli, tmp_path):
    hosts = _hostfile(tmp_path, "127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    closed = free_port()  # nothing listens there: ssh gets "Connection refused" at once
    code, out, err = cli("--hostfile", hosts, "--ssh-port", str(closed), "--check", "--selftest")
    assert code == 2 and "launch: refused" in out and "nothing started" in out
    for line, host in ((1, "127.0.0.1"), (2, "127.0.0.2")):
        assert (
            f"error: {hosts}:{line}: pdsh needs passwordless ssh, but 'ssh -p {closed} {host}' failed"
            in err
        )
    assert "or use --backend no-ssh (one launch per node) or slurm" in err


def test_master_port_in_use(cli, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = cli(
            "--gpus-per-node", "1", "--master-port", str(port), "--check", "--selftest"
        )
        assert code == 2
        assert f"error: --master-port: port {port} on 127.0.0.1 is in use" in err
        assert "Pick a free port with --master-port (the same on every node)" in err
        # no-ssh: only node 0 (the master) checks; node 1 expects node 0 to be listening
        hosts = _hostfile(tmp_path, "n0 slots=1\nn1 slots=1\n")
        common = ["--hostfile", hosts, "--master-addr", "127.0.0.1", "--master-port", str(port)]
        code, _, err = cli(*common, "--node-rank", "0", "--check", "--selftest")
        assert code == 2 and f"port {port} on 127.0.0.1 is in use" in err
        code, out, err = cli(*common, "--node-rank", "1", "--check", "--selftest")
        assert code == 0 and "launch: checks passed (no-ssh, 2 node(s), 2 rank(s)" in out, err


def test_multi_node_cpu_run_needs_an_interface(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    hosts = _hostfile(tmp_path, "node-a slots=1\nnode-b slots=1\n")
    code, out, err = cli("--hostfile", hosts, "--dry-run", "--selftest")
    assert code == 2 and "launch: refused (1 error(s), pdsh, 2 node(s), 2 rank(s))" in out
    assert "error: a multi-node CPU run without GLOO_SOCKET_IFNAME" in err
    assert "Pass --ifname IFACE" in err and "here: " in err and "lo" in err
    code, out, _ = cli("--hostfile", hosts, "--ifname", "eth1", "--dry-run", "--selftest")
    assert code == 0 and re.search(r"^  GLOO_SOCKET_IFNAME +\= eth1   \[--ifname\]$", out, re.M)
    # one node needs none
    code, _, err = cli("--hostfile", hosts, "--nodes", "1", "--dry-run", "--selftest")
    assert code == 0, err


def test_a_launch_from_a_node_without_gpus_onto_other_nodes_is_not_refused(
    cli, tmp_path, monkeypatch
):
    """A login node without GPUs launching onto GPU nodes: this node's accelerator says nothing
    about the ranks'. DS_ACCELERATOR (as the ranks get it) decides; unset, a warning names both."""
    import natscale.launch.preflight as preflight

    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.delenv("DS_ACCELERATOR")
    monkeypatch.setattr(preflight, "is_cpu_run", lambda: True)  # this node: no accelerator
    hosts = _hostfile(tmp_path, "gpu-a slots=1\ngpu-b slots=1\n")
    for backend in ("pdsh", "openmpi"):
        args = ["--hostfile", hosts, "--backend", backend, "--dry-run", "--selftest"]
        args += ["--launcher-args=--allow-run-as-root --bind-to none"] * (backend == "openmpi")
        code, _, err = cli(*args)
        assert code == 0, err
        assert "GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME not set" in err
        assert "gloo (CPU) or NCCL (GPU) is unknown here" in err and "--ifname" in err
    args = ["--hostfile", hosts, "--dry-run", "--selftest", "--env"]
    code, _, err = cli(*args, "DS_ACCELERATOR=cuda")
    assert code == 0 and "NCCL_SOCKET_IFNAME is not set" in err and "gloo" not in err, err
    code, _, err = cli(*args, "DS_ACCELERATOR=cpu")
    assert code == 2 and "error: a multi-node CPU run without GLOO_SOCKET_IFNAME" in err
    # no-ssh: this node runs ranks itself, so its accelerator is theirs
    args = ["--hostfile", hosts, "--backend", "no-ssh", "--node-rank", "0", "--dry-run"]
    code, _, err = cli(*args, "--selftest")
    assert code == 2 and "error: a multi-node CPU run without GLOO_SOCKET_IFNAME" in err


def test_interface_must_exist_on_a_no_ssh_node(cli, tmp_path):
    hosts = _hostfile(tmp_path, "n0 slots=1\nn1 slots=1\n")
    args = ["--hostfile", hosts, "--node-rank", "1", "--master-addr", "127.0.0.1"]
    code, _, err = cli(*args, "--ifname", "natscale-nope", "--check", "--selftest")
    assert code == 2
    assert (
        "error: --ifname: GLOO_SOCKET_IFNAME=natscale-nope: no interface natscale-nope on this node"
        in err
    )


def test_master_that_does_not_resolve(cli, tmp_path):
    hosts = _hostfile(tmp_path, "n0 slots=1\nn1 slots=1\n")
    args = ["--hostfile", hosts, "--node-rank", "0", "--master-addr", "no-such-host.invalid"]
    code, _, err = cli(*args, "--check", "--selftest")
    assert code == 2 and "error: --master-addr: no-such-host.invalid does not resolve" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--include", "node-c"], "error: --include: host 'node-c' is not in"),
        (["--exclude", "node-a:2"], "error: --exclude: slot(s) [2] of node-a: it has slots 0..1"),
        (
            ["--include", "node-a", "--exclude", "node-b"],
            "--include and --exclude cannot be combined",
        ),
        (["--include", "node-a", "--nodes", "1"], "--nodes/--gpus-per-node cannot be combined"),
        (["--nodes", "3"], "error: --nodes: asks for 3 nodes but"),
        (["--gpus-per-node", "4"], "4 per node, but node-a has slots=2"),
        (["--backend", "no-ssh"], "needs --node-rank: run the same launch on every node"),
        (["--node-rank", "2"], "error: --node-rank: 2 is not in 0..1"),
        (["--backend", "pdsh", "--node-rank", "0"], "only the no-ssh backend takes --node-rank"),
        (["--backend", "openmpi", "--nodes", "1"], "the openmpi backend runs every slot"),
        (["--backend", "slurm", "--include", "node-a:1@node-b"], "srun cannot pin tasks"),
        (["--env", "MASTER_ADDR=elsewhere"], "contradicts the launch's node-a; use --master-addr"),
    ],
)
def test_option_errors(cli, tmp_path, args, message):
    hosts = _hostfile(tmp_path, "node-a slots=2\nnode-b slots=2\n")
    code, out, err = cli("--hostfile", hosts, *args, "--dry-run", "--selftest")
    assert code == 2 and "nothing started" in out
    assert message in err


def test_slurm_needs_equal_slots_and_openmpi_refuses_a_second_btl(cli, tmp_path):
    hosts = _hostfile(tmp_path, "node-a slots=2\nnode-b slots=1\n")
    code, _, err = cli("--hostfile", hosts, "--backend", "slurm", "--dry-run", "--selftest")
    assert code == 2
    assert (
        "node-a slots=2 (line 1), node-b slots=1 (line 2); use --gpus-per-node N or equal slots"
        in err
    )
    code, _, err = cli(
        "--hostfile", hosts, "--backend", "slurm", "--gpus-per-node", "1", "--dry-run", "--selftest"
    )
    assert code == 0, err
    mpi = ["--hostfile", hosts, "--backend", "openmpi", "--ifname", "lo"]
    code, _, err = cli(
        *mpi, "--launcher-args=--allow-run-as-root --mca btl self,tcp", "--dry-run", "--selftest"
    )
    assert code == 2 and "Remove '--mca btl ...' from --launcher-args" in err
    if os.geteuid() == 0:
        code, _, err = cli(*mpi, "--dry-run", "--selftest")
        assert (
            code == 2
            and "mpirun refuses to run as root: add --launcher-args '--allow-run-as-root'" in err
        )


def test_bad_hostfile_refuses_with_every_line(cli, tmp_path):
    hosts = _hostfile(tmp_path, "node-a slots=2\nnode-b\nnode-a slots=2\n")
    code, out, err = cli("--hostfile", hosts, "--dry-run", "--selftest")
    assert code == 2 and "launch: refused (2 error(s), pdsh); nothing started" in out
    assert (
        f"error: {hosts}:2: no slots" in err
        and f"error: {hosts}:3: host 'node-a' is listed again" in err
    )
    code, _, err = cli("--hostfile", str(tmp_path / "nope"), "--dry-run", "--selftest")
    assert code == 2 and "hostfile not found" in err


def test_bad_command_arguments_are_refused_before_launch(cli):
    code, out, err = cli("--dry-run", "--selftest", "--", "--steps", "many")
    assert "nothing started" in out
    assert code == 2 and "error: after --: natscale selftest --steps many: argument --steps" in err


def test_an_existing_deepspeed_env_is_kept_and_a_dry_run_writes_nothing(cli, tmp_path):
    hosts = _hostfile(tmp_path, "node-a slots=1\nnode-b slots=1\n")
    (tmp_path / ".deepspeed_env").write_text("NCCL_IB_DISABLE=1\nGLOO_SOCKET_IFNAME=eth7\n")
    code, out, err = cli("--hostfile", hosts, "--dry-run", "--selftest")
    assert code == 0, err
    assert (
        "note: " in err
        and "keeping 2 variable(s) of a .deepspeed_env not written by natscale" in err
    )
    assert re.search(r"^  NCCL_IB_DISABLE +\= 1   \[existing env file\]$", out, re.M)
    assert re.search(r"^  GLOO_SOCKET_IFNAME +\= eth7   \[existing env file\]$", out, re.M)
    assert "export NCCL_IB_DISABLE=1;" in out  # what pdsh exports on every node
    assert (
        tmp_path / ".deepspeed_env"
    ).read_text() == "NCCL_IB_DISABLE=1\nGLOO_SOCKET_IFNAME=eth7\n"
    code, out, err = cli("--hostfile", hosts, "--ifname", "eth1", "--dry-run", "--selftest")
    assert re.search(r"^  GLOO_SOCKET_IFNAME +\= eth1   \[--ifname\]$", out, re.M)


def test_device_uuids_in_cuda_visible_devices_are_refused_not_a_traceback(cli, monkeypatch):
    from deepspeed.accelerator import get_accelerator

    var = get_accelerator().visible_devices_envs()[0]
    monkeypatch.setenv(var, "GPU-5f3c,GPU-9a1b")
    code, out, err = cli("--dry-run", "--selftest")
    assert code == 2 and "nothing started" in out
    assert f"error: {var}=GPU-5f3c,GPU-9a1b: deepspeed's launcher takes only device numbers" in err
    code, _, err = cli("--gpus-per-node", "1", "--dry-run", "--selftest")  # numbers 0..N-1
    assert code == 0, err


def test_a_line_break_in_a_variable_is_refused_only_where_an_env_file_is_written(
    cli, tmp_path, monkeypatch
):
    """no-ssh and single-node launches pass the variables to the deepspeed process itself
    (launcher/slurm/train.sbatch's tasks once exported a newline-separated host list)."""
    monkeypatch.setenv("NATSCALE_HOSTS", "node-a\nnode-b")
    hosts = _hostfile(tmp_path, "node-a slots=1\nnode-b slots=1\n")
    code, out, err = cli("--hostfile", hosts, "--node-rank", "1", "--dry-run", "--selftest")
    assert code == 0 and "dry run OK (no-ssh" in out, err
    code, out, err = cli("--gpus-per-node", "1", "--dry-run", "--selftest")
    assert code == 0, err
    code, out, err = cli("--hostfile", hosts, "--dry-run", "--selftest")
    assert code == 2 and "launch: refused (1 error(s), pdsh)" in out
    assert "error: NATSCALE_HOSTS: a value with a line break cannot go into" in err


def _fake_scontrol(tmp_path, monkeypatch, *hosts: str) -> None:
    """`scontrol show hostnames LIST` printing ``hosts`` (SLURM's order) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    lines = "".join(f"echo {h}\n" for h in hosts)
    script.write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n{lines}')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_slurm_master_is_the_first_node_in_slurms_order_not_the_hostfiles(
    cli, tmp_path, monkeypatch
):
    """srun numbers its tasks in the job's node order: with `gpu2` on the hostfile's first line,
    rank 0 ran on gpu1 while every rank waited for a master on gpu2."""
    _fake_scontrol(tmp_path, monkeypatch, "gpu1", "gpu2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[1-2]")
    hosts = _hostfile(tmp_path, "gpu2 slots=2\ngpu1 slots=2\n")
    slurm = ["--hostfile", hosts, "--backend", "slurm", "--dry-run", "--selftest"]
    code, out, err = cli(*slurm)
    assert code == 0, err
    assert "master gpu1:29500" in out and ",MASTER_ADDR=gpu1," in out
    assert "note: --backend slurm: master gpu1: srun starts rank 0 on the first node" in err
    assert f"node 0: gpu1, slots 0,1, ranks 0-1  ({hosts}:2)" in out
    # --include: srun gets --nodelist, and rank 0 runs on the first of those in SLURM's order
    code, out, err = cli(*slurm, "--include", "gpu2")
    assert code == 0 and "master gpu2:29500" in out, err
    code, out, err = cli(*slurm, "--master-addr", "10.0.0.1")  # given: taken as it is
    assert code == 0 and "master 10.0.0.1:29500" in out and "note: --backend slurm" not in err
    # hosts that are not the job's nodes, or no scontrol: refused, not a hang
    hosts = _hostfile(tmp_path, "gpu1 slots=2\ngpu9 slots=2\n")
    code, out, err = cli("--hostfile", hosts, *slurm[2:])
    assert code == 2 and "launch: refused (1 error(s), slurm)" in out
    assert f"error: {hosts}:2: gpu9 not among this job's nodes (gpu1, gpu2, from" in err
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out, err = cli(*slurm)
    assert code == 2 and "cannot list this job's nodes in SLURM's order" in err
    assert "scontrol is not on PATH" in err and "or give --master-addr" in err
    # outside an allocation: the hostfile's first host, with a warning that says so
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    code, out, err = cli(*slurm)
    assert code == 0 and "master gpu1:29500" in out
    assert "warning: --backend slurm: not inside a SLURM allocation" in err


def test_pdsh_refuses_what_its_remote_shell_would_break(cli, tmp_path, monkeypatch):
    """DeepSpeed's pdsh runner joins the remote command unquoted (`cd /tmp/x/my run;` -> cd: too
    many arguments) and wraps values in "..." where $ ` \\ " still act (`cost$5` -> `cost`); the
    dry run said OK."""
    hosts = _hostfile(tmp_path, "node-a slots=1\nnode-b slots=1\n")
    folder = tmp_path / "my run"
    folder.mkdir()
    monkeypatch.chdir(folder)
    pdsh = ["--hostfile", hosts, "--dry-run", "--selftest"]
    code, out, err = cli(*pdsh)
    assert code == 2 and "launch: refused (1 error(s), pdsh" in out
    assert f"error: --backend pdsh: the working directory '{folder}' holds a space" in err
    monkeypatch.chdir(tmp_path)
    for value, shown in (('a"b', "'\"'"), ("cost$5", "'$'"), ("a`b`", "'`'"), ("a\\b", "'\\\\'")):
        code, out, err = cli(*pdsh[:-1], "--env", f"NATSCALE_NOTE={value}", "--selftest")
        assert code == 2 and "launch: refused (1 error(s), pdsh" in out, value
        assert f"error: environment: NATSCALE_NOTE={value!r} (--env) holds {shown}: pdsh" in err
    code, _, err = cli(*pdsh, "--", "--lr", "1e-3;x")
    assert "error: after --: argument '1e-3;x' holds ';': DeepSpeed's pdsh runner" in err
    code, _, err = cli(*pdsh, "--", "--lr", "1 $HOME")
    assert "error: after --: argument '1 $HOME' holds '$'" in err
    code, _, err = cli(*pdsh, "--", "--lr", 'a "b"')  # DeepSpeed escapes " in "...": fine
    assert "argument 'a \"b\"'" not in err
    # a value with spaces is fine in "..."; no-ssh has no remote shell at all
    code, _, err = cli(*pdsh[:-1], "--env", "NATSCALE_NOTE=a b", "--selftest")
    assert code == 0, err
    code, _, err = cli(
        *pdsh[:-1], "--node-rank", "0", "--env", "NATSCALE_NOTE=cost$5", "--selftest"
    )
    assert code == 0, err


def test_openmpi_and_slurm_check_what_deepspeed_exports_itself(cli, tmp_path, monkeypatch):
    """DeepSpeed's runner also exports this node's PYTHON*/MLFLOW*/UCX*/MV2* variables and
    ~/.deepspeed_env: quotes reached mpirun literally, srun split a value at its comma."""
    hosts = _hostfile(tmp_path, "node-a slots=1\nnode-b slots=1\n")
    mpi = ["--hostfile", hosts, "--backend", "openmpi", "--launcher-args=--allow-run-as-root"]
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nat sweep")
    code, out, err = cli(*mpi, "--ifname", "lo", "--dry-run", "--selftest")
    assert code == 2 and "launch: refused (1 error(s), openmpi" in out
    assert "error: environment: MLFLOW_EXPERIMENT_NAME='nat sweep' (exported by DeepSpeed" in err
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore,default")
    slurm = ["--hostfile", hosts, "--backend", "slurm", "--dry-run", "--selftest"]
    code, out, err = cli(*slurm)
    assert code == 2 and "launch: refused (1 error(s), slurm" in out
    assert "error: environment: PYTHONWARNINGS='ignore,default' (exported by DeepSpeed" in err
    assert "splits values at commas" in err
    monkeypatch.delenv("PYTHONWARNINGS")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".deepspeed_env").write_text("UCX_NOTE=a b\n")
    code, _, err = cli(*slurm)
    assert code == 2 and "error: environment: UCX_NOTE='a b' (exported by DeepSpeed" in err
