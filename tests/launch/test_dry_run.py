"""Golden `natscale launch --dry-run` output for every backend on a 2-node hostfile.

The run is real (a tiny prepared dataset, a tiny model config, a run config that `natscale train`
validates); the environment is controlled and machine paths are replaced by placeholders
(<PYTHON>, <BIN>, <REPO>, <CWD>). Regenerate with NATSCALE_UPDATE_GOLDEN=1 after an intended change
and read the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from natscale.cli.main import main
from natscale.launch.envfile import python_bin, source_root
from tests.train.train_fixtures import (
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = (
    os.environ.get("NATSCALE_UPDATE_GOLDEN") == "1"
)  # read before the fixture clears NATSCALE_*
HOSTS = "# two nodes of two slots\nnode-a slots=2\nnode-b slots=2\n"
BACKENDS = {
    "pdsh": [],
    "openmpi": ["--backend", "openmpi", "--launcher-args=--allow-run-as-root --bind-to none"],
    "slurm": ["--backend", "slurm"],
    "no-ssh": ["--backend", "no-ssh", "--node-rank", "1", "--master-addr", "10.0.0.1"],
}
# variables that would leak this machine's environment into the output
_DROP = (
    "NCCL", "GLOO_", "HF_", "TORCH_", "TRANSFORMERS_", "NATSCALE_", "PYTHON", "MLFLOW", "MV2",
    "UCX", "DS_", "CUDA_", "OMP_", "TOKENIZERS_", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PDSH_", "SLURM_",
)  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path as the working directory, holding hosts, data/, model/ and run.yaml (relative)."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(_DROP):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # not the launch folder (refused)
    (tmp_path / "hosts").write_text(HOSTS)
    save_rows(pack_greedy(make_segments(24, seed=0), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    write_run_config(
        tmp_path / "run.yaml",
        data_dir=Path("data"),
        model_config=Path("model/config.json"),
        out=Path("runs/golden"),
        train={"grad_accum": 2},
    )
    return tmp_path


def _normalise(text: str, cwd: Path) -> str:
    for real, placeholder in (
        (sys.executable, "<PYTHON>"),
        (python_bin(), "<BIN>"),
        (source_root(), "<REPO>"),
        (str(cwd), "<CWD>"),
    ):
        text = text.replace(real, placeholder)
    # the env file's mark hashes the real (machine-dependent) values
    return re.sub(r"NATSCALE_ENV_FILE=[0-9a-f]{12}", "NATSCALE_ENV_FILE=<HASH>", text)


def _dry_run(backend: str, capsys, cwd: Path) -> str:
    args = ["launch", "--hostfile", "hosts", "--ifname", "eth1", *BACKENDS[backend]]
    code = main([*args, "--dry-run", "--", "run.yaml", "--set", "train.lr=1e-3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return _normalise(
        f"$ natscale {' '.join(args)} --dry-run -- run.yaml --set train.lr=1e-3\n{err}{out}", cwd
    )


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_golden_dry_run(backend: str, run_dir: Path, capsys):
    text = _dry_run(backend, capsys, run_dir)
    path = GOLDEN / f"dry_run_{backend}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert "/tmp/" not in text and str(Path.home()) not in text.replace("<", "")
    assert text == path.read_text(), (
        f"dry run of {backend} changed; NATSCALE_UPDATE_GOLDEN=1 rewrites {path}"
    )
    assert not (run_dir / ".deepspeed_env").exists()  # a dry run writes nothing


def test_dry_run_facts(run_dir: Path, capsys):
    """What the golden files must keep saying, spelled out."""
    text = _dry_run("pdsh", capsys, run_dir)
    assert "backend: pdsh; 2 node(s), world size 4; master node-a:29500" in text
    assert "  node 1: node-b, slots 0,1, ranks 2-3  (hosts:3)" in text
    assert "1 row(s) x 2 accumulation x 4 ranks = 8 rows per step" in text
    assert "pdsh -S -f 1024 -w node-a,node-b" in text and "--node_rank=%n" in text
    assert "--node_rank=1 --master_addr=node-a --master_port=29500 --module" in text
    assert "export GLOO_SOCKET_IFNAME=eth1;" in text and "export MASTER_ADDR=node-a;" in text
    text = _dry_run("openmpi", capsys, run_dir)
    assert (
        "mpirun -n 4 -hostfile hosts --mca btl '^openib' --allow-run-as-root --bind-to none" in text
    )
    assert "--mca btl_tcp_if_include eth1 --mca oob_tcp_if_include eth1" in text
    assert "-x MASTER_ADDR=node-a -x MASTER_PORT=29500" in text
    text = _dry_run("slurm", capsys, run_dir)
    assert (
        "srun -n 4 --export=ALL," in text
        and "<REPO>/natscale/launch/entry.py train run.yaml" in text
    )
    text = _dry_run("no-ssh", capsys, run_dir)
    for rank in (0, 1):
        assert (
            f"--node-rank {rank} --master-addr 10.0.0.1 --master-port 29500 --ifname eth1 -- run.yaml"
            in text
        )
        assert f"--no_ssh --node_rank {rank} --module natscale.cli train run.yaml" in text


def test_launcher_args_of_one_word_starting_with_a_dash(run_dir: Path, capsys):
    """`--launcher-args=--allow-run-as-root` (docs/launch.md's form) reaches mpirun: DeepSpeed's
    runner gets it as `--launcher_args=...`, which its parser reads as a value."""
    args = [
        "launch",
        "--hostfile",
        "hosts",
        "--backend",
        "openmpi",
        "--env",
        "GLOO_SOCKET_IFNAME=eth1",
    ]
    code = main([*args, "--launcher-args=--allow-run-as-root", "--dry-run", "--", "run.yaml"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--launcher_args=--allow-run-as-root" in out + err
    assert "--allow-run-as-root -x UCX_TLS=tcp" in out  # in the mpirun command DeepSpeed builds


def test_missing_data_is_refused_with_a_pointer_to_prepare(run_dir: Path, capsys):
    code = main(["launch", "--dry-run", "--", "run.yaml", "--set", "data.path=not/prepared"])
    out, err = capsys.readouterr()
    assert code == 2 and "launch: refused (1 error(s)" in out
    assert (
        "error: run.yaml: data.path not/prepared does not exist. natscale launch never tokenises"
        in err
    )
    assert "`natscale prepare PREPARE_CONFIG --out not/prepared`" in err


def test_bad_run_config_is_refused_with_the_hostfile_errors(run_dir: Path, capsys):
    (run_dir / "hosts").write_text("node-a slots=2\nnode-b slots=two\n")
    args = ["launch", "--hostfile", "hosts", "--ifname", "eth1", "--dry-run"]
    code = main([*args, "--", "run.yaml", "--set", "train.lr_rate=1"])
    out, err = capsys.readouterr()
    assert code == 2 and "launch: refused (2 error(s), pdsh)" in out
    assert "error: hosts:2: 'slots=two' is not 'slots=N'" in err
    assert "train.lr_rate: unknown key" in err


def test_an_implausible_slot_count_is_named_not_a_traceback(run_dir: Path, capsys):
    # DeepSpeed's selection built list(range(slots)): OverflowError
    (run_dir / "hosts").write_text("node-a slots=99999999999999999999\nnode-b slots=2\n")
    code = main(["launch", "--hostfile", "hosts", "--ifname", "eth1", "--dry-run", "run.yaml"])
    out, err = capsys.readouterr()
    assert code == 2 and "launch: refused" in out and "Traceback" not in err
    assert "error: hosts:1: node-a has slots=99999999999999999999, more ranks than" in err


def test_the_run_config_is_given_once(run_dir: Path, capsys):
    code = main(["launch", "--dry-run", "--", "run.yaml", "--config", "other.yaml"])
    _, err = capsys.readouterr()
    assert (
        code == 2 and "error: after --: give the run config once (CONFIG or --config CONFIG)" in err
    )
    code = main(["launch", "--dry-run", "--", "--resume"])
    out, err = capsys.readouterr()
    assert code == 2 and "nothing started" in out
    assert "error: after --: no run config: natscale launch [options] -- CONFIG [--set" in err


def test_a_run_config_that_is_the_run_directorys_config_yaml_is_refused(run_dir: Path, capsys):
    """natscale train refuses it (the run overwrites that file), with --fresh too (which skips
    the start-file checks): so does launch, before any node starts."""
    own = run_dir / "runs" / "golden" / "config.yaml"
    own.parent.mkdir(parents=True)
    text = "# my notes\n" + (run_dir / "run.yaml").read_text()
    own.write_text(text)
    for extra in ([], ["--fresh"]):
        code = main(["launch", "--dry-run", "--", "runs/golden/config.yaml", *extra])
        out, err = capsys.readouterr()
        assert code == 2 and "launch: refused (1 error(s)" in out, (extra, out, err)
        assert "keep the run config outside the run directory" in err
    assert own.read_text() == text


def test_a_launch_from_the_home_directory_is_refused(run_dir: Path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(run_dir))
    code = main(
        ["launch", "--hostfile", "hosts", "--ifname", "eth1", "--dry-run", "--", "run.yaml"]
    )
    out, err = capsys.readouterr()
    assert code == 2 and "launch: refused (1 error(s)" in out
    assert "is the env file in your home directory" in err
    assert not (run_dir / ".deepspeed_env").exists()


def test_runcheck_takes_train_args_without_the_cli(run_dir: Path, monkeypatch):
    from natscale.launch.runcheck import check_train
    from natscale.train.args import TrainArgs

    for name in [m for m in sys.modules if m.startswith("natscale.cli")]:
        monkeypatch.delitem(sys.modules, name)
    args = TrainArgs("run.yaml", ["train.lr=1e-3"], resume=True)
    lines, findings = check_train(args, world_size=4)
    assert not [m for m in sys.modules if m.startswith("natscale.cli")]
    assert (
        lines[0] == "run config: run.yaml (resume) -> runs/golden" and "8 rows per step" in lines[2]
    )
    assert [f.level for f in findings] == ["note"]  # no tokenizer


def test_exclude_leaving_no_host_is_refused(run_dir: Path, capsys):
    for spec in ("node-a@node-b", "node-a:0,1@node-b:0,1"):
        args = ["launch", "--hostfile", "hosts", "--ifname", "eth1", "--exclude", spec]
        code = main([*args, "--dry-run", "--", "run.yaml"])
        out, err = capsys.readouterr()
        assert code == 2 and "launch: refused (1 error(s)" in out
        assert "error: --exclude: this leaves no host and no slot of hosts to launch on" in err


def test_hostfile_with_a_byte_order_mark_is_refused_with_how_to_remove_it(run_dir: Path, capsys):
    """DeepSpeed gets the hostfile's path and reads the mark as part of the first host name
    ('\ufeffnode-a'): the dry run said OK, then the launch failed."""
    (run_dir / "hosts").write_bytes(b"\xef\xbb\xbf" + HOSTS.encode())
    code = main(["launch", "--hostfile", "hosts", "--ifname", "eth1", "--dry-run", "run.yaml"])
    out, err = capsys.readouterr()
    assert code == 2 and "launch: refused (1 error(s), pdsh)" in out
    assert "error: hosts:1: the hostfile starts with a UTF-8 byte order mark" in err
    fix = err.split("Remove it: ")[1].split(" (or save")[0]
    subprocess.run(fix, shell=True, check=True, cwd=run_dir)  # the command it gives works
    assert (run_dir / "hosts").read_text() == HOSTS
    text = _dry_run("pdsh", capsys, run_dir)
    assert "pdsh -S -f 1024 -w node-a,node-b" in text
