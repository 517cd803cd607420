"""The wheel works outside the checkout: built with ``pip wheel``, installed into a fresh venv,
``natscale env``, ``prepare`` and a 1-rank ``train`` run from another directory.

The fresh venv gets natscale from the wheel only; the heavy dependencies (torch, DeepSpeed, ...)
come from the running environment through a ``.pth`` line (a plain path: the ``.pth`` files there,
e.g. an editable natscale, are not run). Nothing of the checkout is on ``sys.path``; the example
data is passed by absolute path. The DeepSpeed config is named as users name it,
``ds_configs/zero3_cpu.json``, and must come from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from natscale.ops.builder import SEGMENT_CE_CPU

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{out[-4000:]}"
    return proc.stdout


def _build_wheel(tmp: Path) -> Path:
    """``pip wheel`` of a clean copy of the sources (no stale build/ folder, no built .so)."""
    src = tmp / "src"
    junk = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    shutil.copytree(REPO / "natscale", src / "natscale", ignore=junk)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*cmd, "-w", str(dist), str(src)], cwd=tmp, env=_env(), timeout=300)
    (wheel,) = dist.glob("natscale-*.whl")
    return wheel


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DS_ACCELERATOR")}
    env.update(GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and the running environment's packages visible."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp,
        env=_env(),
    ).strip()
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "shared_deps.pth").write_text("".join(f"{p}\n" for p in sorted(shared)))
    # --ignore-installed: never look at (or uninstall) a natscale of the shared environment
    install = ["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    _run([str(python), *install, str(wheel)], cwd=tmp, env=_env())
    return venv


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path):
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # no ds_configs/, no examples/ here
    work.mkdir()
    env = _env(
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),  # not the checkout's cache
        NATSCALE_SEGMENT_CE_IMPL="reference",  # the op build is checked without compiling
    )
    natscale = str(venv / "bin" / "natscale")
    python = str(venv / "bin" / "python")

    probe = (
        "import json, natscale\n"
        "from natscale.config.ds_config import resolve_ds_config_path\n"
        "from natscale.ops.builder import SEGMENT_CE_CPU as op\n"
        "print(json.dumps({'package': natscale.__file__, 'sources': str(op.source_root()),\n"
        "  'hash': op.sources_hash(), 'ds': str(resolve_ds_config_path("
        "'ds_configs/zero3_cpu.json'))}))\n"
    )
    where = json.loads(_run([python, "-c", probe], cwd=work, env=env))
    installed = Path(where["package"]).parent
    assert installed.is_relative_to(venv), where  # the wheel's copy, not the checkout's
    assert Path(where["sources"]) == installed / "csrc"
    assert Path(where["ds"]) == installed / "ds_configs" / "zero3_cpu.json"
    assert where["hash"] == SEGMENT_CE_CPU.sources_hash()  # a prebuilt op's check still holds

    report = _run([natscale, "env"], cwd=work, env=env)
    assert "natscale" in report
    if shutil.which(os.environ.get("CXX", "c++")):
        assert "JIT-buildable" in report or "loaded from" in report, report

    prepare = yaml.safe_load((EXAMPLES / "configs" / "prepare_math.yaml").read_text())
    (source,) = prepare["sources"]
    source["paths"] = [str(REPO / p) for p in source["paths"]]
    source["questions"] = [str(REPO / p) for p in source["questions"]]
    source["prompt"] = str(REPO / source["prompt"])
    prepare["render"]["tokenizer"] = str(EXAMPLES / "tokenizer")
    prepare.update(output="data", num_proc=1)
    prepare["pack"]["max_seq_len"] = 512
    (work / "prepare.yaml").write_text(yaml.safe_dump(prepare))
    _run([natscale, "prepare", "prepare.yaml"], cwd=work, env=env)
    assert (work / "data" / "stats.json").is_file()

    train = {
        "output_dir": "run",
        "model": {
            "config": str(EXAMPLES / "models" / "tiny-llama" / "config.json"),
            "activation_checkpointing": False,
        },
        "data": {"path": "data", "micro_batch_rows": 1},
        "train": {"precision": "fp32", "steps": 2, "warmup_steps": 1, "lr": 1e-3},
        "deepspeed": {"config": "ds_configs/zero3_cpu.json"},  # the shipped one, by its name
        "checkpoint": {"every_steps": 0, "export_hf": False},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    (work / "train.yaml").write_text(yaml.safe_dump(train))
    out = _run([natscale, "train", "train.yaml"], cwd=work, env=env)
    assert "train: finished at step 2/2" in out, out[-3000:]
    shipped = json.loads((installed / "ds_configs" / "zero3_cpu.json").read_text())
    filled = json.loads((work / "run" / "ds_config.json").read_text())
    assert filled["zero_optimization"]["stage"] == shipped["zero_optimization"]["stage"] == 3
