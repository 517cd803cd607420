import json
import os
import subprocess
import sys

from natscale.cli.main import COMMANDS, main


def _natscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "natscale.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_unknown_subcommand_prints_help_and_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in err
    for name in COMMANDS:
        assert name in err


def test_no_subcommand_exits_2(capsys):
    assert main([]) == 2


def test_env_json_names_accelerator_and_backend():
    proc = _natscale("env", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["deepspeed"]["accelerator"] == "cpu"
    assert info["deepspeed"]["communication_backend"] == "gloo"
    assert info["python"].count(".") == 2
    for pkg in ("torch", "deepspeed", "transformers", "datasets", "flash-attn", "mpi4py"):
        assert pkg in info["packages"]
    assert info["ops"] and all("active" in op for op in info["ops"])


def test_env_text_ends_with_summary_line():
    proc = _natscale("env")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("env: torch ")


def test_deepspeed_local_rank_argument_is_dropped(capsys, monkeypatch):
    # `deepspeed --module natscale.cli X` runs `python -m natscale.cli --local_rank=N X`
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["--local_rank=1", "no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert os.environ.pop("LOCAL_RANK") == "1"


def test_version_flag_prints_the_version(capsys):
    from natscale import __version__

    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out == f"natscale {__version__}\n"
    assert main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def test_a_closed_stdout_pipe_ends_quietly_with_141():
    """`natscale ... | head -1`: the reader is gone before the command prints; no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natscale.cli", "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before the interpreter has even started importing natscale
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(monkeypatch):
    import natscale.cli.main as cli_main

    def broken(argv):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a tool worker's pipe, stdout fine

    monkeypatch.setattr(cli_main, "_run", broken)
    try:
        cli_main.main(["env"])
    except BrokenPipeError:
        pass
    else:
        raise AssertionError("a broken pipe other than stdout was swallowed")
