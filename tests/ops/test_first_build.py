"""First-use builds say what they build before the silent minute, and only when they build.

A real JIT build through OpBuilder (a tiny Python C module, compiled in seconds), and DeepSpeed's
shm op decision against its real sources with an empty and a filled cache folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from natscale.ops import first_build
from natscale.ops.builder import OpBuilder

PROBE = """
#include <Python.h>
static struct PyModuleDef probe = {PyModuleDef_HEAD_INIT, "natscale_probe_op", nullptr, -1};
extern "C" PyObject* PyInit_natscale_probe_op(void) { return PyModule_Create(&probe); }
"""


class ProbeBuilder(OpBuilder):
    name = "natscale_probe_op"
    label = "probe"
    prebuilt_name = "natscale.ops._no_such_prebuilt_probe"

    def __init__(self, source: Path) -> None:
        super().__init__()
        self._source = source

    def sources(self) -> list[str]:
        return [str(self._source)]

    def include_dirs(self) -> list[str]:
        return []

    def cxx_flags(self) -> list[str]:
        return ["-O0"]

    def description(self) -> str:
        return "the probe op"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return cache


def test_jit_build_is_announced_once_then_cached(empty_cache, tmp_path, capfd):
    source = tmp_path / "probe.cpp"
    source.write_text(PROBE)
    builder = ProbeBuilder(source)
    if not builder.compatible()[0]:
        pytest.skip(builder.compatible()[1])

    module = builder.load()
    assert module.__name__ == "natscale_probe_op"
    err = capfd.readouterr().err
    notice = [line for line in err.splitlines() if "natscale: building" in line]
    assert len(notice) == 1, err
    assert "the probe op (natscale_probe_op)" in notice[0]
    assert str(empty_cache / "natscale_probe_op") in notice[0]
    assert first_build.TYPICAL in notice[0] and "natscale env --build-ops" in notice[0]
    assert "natscale: built natscale_probe_op in " in err
    # the notice comes before the build's end, so the user reads it while waiting
    assert err.index("natscale: building") < err.index("natscale: built")

    # a new process (a fresh builder) with the library cached: silent
    assert ProbeBuilder(source).load().__name__ == "natscale_probe_op"
    assert "natscale: build" not in capfd.readouterr().err

    # a source newer than the library: it rebuilds, and says so
    later = time.time() + 5
    os.utime(source, (later, later))
    assert first_build.needs_build(empty_cache / builder.name, builder.name, [source])


def test_builds_use_the_wheels_ninja_whatever_comes_first_on_path(
    empty_cache, tmp_path, monkeypatch
):
    """Another ninja first on PATH (a system 1.11, or here one that fails every build): the JIT
    build still goes through natscale's own ninja, which is then first for child processes too."""
    ninja = pytest.importorskip("ninja")
    fake = tmp_path / "other-bin"
    fake.mkdir()
    (fake / "ninja").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo 1.11.1 && exit 0\necho "other ninja" >&2\nexit 1\n'
    )
    (fake / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    name = "natscale_ninja_probe_op"  # torch refuses a second build of a name in one process
    source = tmp_path / "probe.cpp"
    source.write_text(PROBE.replace("natscale_probe_op", name))
    builder = ProbeBuilder(source)
    builder.name = name
    if not builder.compatible()[0]:
        pytest.skip(builder.compatible()[1])

    assert builder.load().__name__ == name
    first = os.environ["PATH"].split(os.pathsep)[0]
    assert Path(first, "ninja").resolve() == Path(ninja.BIN_DIR, "ninja").resolve()
    assert first_build.use_natscale_ninja() is None  # already first: PATH is left as it is


def test_only_local_rank_0_announces(empty_cache, monkeypatch, capfd):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not first_build.announce_build("x", "x_op", empty_cache / "x_op")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert first_build.announce_build("x", "x_op", empty_cache / "x_op")
    err = capfd.readouterr().err
    assert err.count("natscale: building") == 1 and err.startswith("[rank 2] natscale: building")


def test_deepspeed_shm_op_notice_only_when_not_cached(empty_cache, capfd):
    builder = first_build._shm_builder()
    if builder is None:
        pytest.skip("DeepSpeed's shm op is Linux-only")
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get(first_build.SHM_OP):
        pytest.skip("DeepSpeed was installed with the shm op prebuilt")
    inputs = first_build.shm_op_inputs(builder)
    assert any(p.name == "shm.cpp" for p in inputs) and all(p.is_file() for p in inputs)

    # empty cache: DeepSpeed's init_distributed would compile it -> the notice
    assert first_build.shm_op_needs_build()
    assert first_build.announce_shm_op_build()
    err = capfd.readouterr().err
    assert "DeepSpeed's shared-memory all-reduce op (deepspeed_shm_comm)" in err
    assert str(empty_cache / "deepspeed_shm_comm") in err

    # a library newer than every source and header: nothing to build, nothing printed
    built = empty_cache / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built.parent.mkdir()
    built.write_bytes(b"")
    newest = max(p.stat().st_mtime for p in inputs) + 1
    os.utime(built, (newest, newest))
    assert not first_build.shm_op_needs_build()
    assert not first_build.announce_shm_op_build()
    assert "natscale: building" not in capfd.readouterr().err


def test_makefile_and_tests_share_one_extensions_cache():
    """`make install` builds into the cache the test suite (conftest.py) reads."""
    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    assert "export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions" in makefile
    assert "natscale.cli.main env --build-ops" in makefile
    conftest = (root / "conftest.py").read_text()
    assert 'str(REPO_ROOT / ".cache" / "torch_extensions")' in conftest


def test_checkout_cache_is_the_default_after_make_install():
    from natscale.cli.main import use_checkout_op_cache

    cache = Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"
    cache.mkdir(parents=True, exist_ok=True)  # what `make install` leaves (git-ignored)
    env: dict[str, str] = {}
    assert use_checkout_op_cache(env) == str(cache) == env["TORCH_EXTENSIONS_DIR"]
    env = {"TORCH_EXTENSIONS_DIR": "/elsewhere"}
    assert use_checkout_op_cache(env) is None and env["TORCH_EXTENSIONS_DIR"] == "/elsewhere"


def test_a_killed_shm_op_build_leaves_no_lock_that_hangs_the_next_run(tmp_path):
    """A first run stopped during DeepSpeed's silent shm-op build left torch's ``lock`` file;
    every later run then waited on it in init_distributed for ever. natscale loads the op under
    its own build lock first, which knows such a file is a dead build's."""
    import shutil
    import subprocess
    import sys

    if first_build._shm_builder() is None or first_build.shm_op_needs_build():
        pytest.skip("DeepSpeed's shm op is not built in this checkout's cache")
    built = first_build.extensions_root() / first_build.SHM_OP
    cache = tmp_path / "torch_extensions"
    shutil.copytree(built, cache / first_build.SHM_OP)  # a copy: ninja finds it up to date
    (cache / first_build.SHM_OP / "lock").touch()  # what a killed build leaves
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "DS_ACCELERATOR": "cpu"}
    code = "from natscale.ops.first_build import load_shm_op; load_shm_op()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left by a build that did not finish" in proc.stderr
    assert not (cache / first_build.SHM_OP / "lock").exists()
