"""natscale.atomic's file and folder writes: whole or not at all, with the umask's permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from natscale.atomic import (
    atomic_output_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_destination,
    partial_dir,
    replace_dir,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_files_get_the_umask_and_no_temp_is_left(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"k": "é"}, ensure_ascii=False)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "k": "é"\n}\n'
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "a.txt": 0o640,
        "b.bin": 0o640,
        "c.json": 0o640,
    }


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"old": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")
    assert json.loads(target.read_text(encoding="utf-8")) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    final, new = tmp_path / "hf", tmp_path / "hf.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp or old folder left
    other = tmp_path / "other"
    other.mkdir()
    replace_dir(other, tmp_path / "fresh")  # nothing to replace: a plain rename
    assert (tmp_path / "fresh").is_dir() and not other.exists()


@pytest.mark.parametrize("signal", [KeyboardInterrupt, OSError])
def test_replace_dir_stopped_between_its_renames_puts_the_old_folder_back(
    tmp_path, monkeypatch, signal
):
    """Ctrl-C/SIGTERM (or an error) after the old folder was moved aside and before the new one
    took its place: the old folder is back under its name, not hidden in .NAME.old-HOST-PID."""
    import natscale.atomic as atomic

    final, new = tmp_path / "hf", tmp_path / "hf.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the new folder into place
            raise signal
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(signal):
        replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf.tmp"]


def test_stale_partials_of_this_host_go_and_other_hosts_stay(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = partial_dir(out).with_name(partial_dir(out).name.rsplit("-", 1)[0] + f"-{dead.pid}")
    older = tmp_path / f".out.partial-{dead.pid}"  # named before the host was in the name
    other = tmp_path / f".out.partial-node7-{dead.pid}"  # another node on a shared filesystem
    # the old output of a replace_dir stopped while deleting it (the new one was in place)
    old = tmp_path / mine.name.replace(".partial-", ".old-")
    old_other = tmp_path / f".out.old-node7-{dead.pid}"
    live = tmp_path / mine.name.replace(".partial-", ".old-").replace(f"-{dead.pid}", "-1")
    for folder in (mine, older, other, old, old_other, live):
        folder.mkdir()
    with atomic_output_dir(out, kind="prepared") as tmp:
        assert tmp == partial_dir(out) and tmp.name.endswith(f"-{os.getpid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [other.name, old_other.name, live.name, "out"]
    )


def test_an_output_below_a_file_is_refused_with_a_reason(tmp_path):
    (tmp_path / "config.yaml").write_text("x")
    with pytest.raises(FileExistsError, match=r"config\.yaml is a file, not a folder"):
        check_destination(tmp_path / "config.yaml" / "sub", False, kind="prepared")


@pytest.mark.parametrize("enclosing", ["prepared", "hf-export"])
@pytest.mark.parametrize("kind", ["prepared", "hf-export"])
def test_an_output_inside_another_natscale_output_is_refused(tmp_path, enclosing, kind):
    # e.g. `natscale convert zero-to-hf CKPT runs/x/data/hf` or `prepare --out RUN/hf/data`
    from natscale.atomic import write_marker

    outer = tmp_path / "outer"
    outer.mkdir()
    write_marker(outer, enclosing)
    for out in (outer / "sub", outer / "a" / "b"):
        with (
            pytest.raises(FileExistsError, match=r"is inside .*outer, .*choose an output outside"),
            atomic_output_dir(out, kind=kind),
        ):
            pass
    assert sorted(p.name for p in outer.iterdir()) == [".natscale-output"]
    # beside it is fine
    with atomic_output_dir(tmp_path / "beside", kind=kind) as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "beside" / "f").is_file()


def test_an_existing_empty_folder_is_filled_not_replaced(tmp_path):
    """An empty OUT_DIR, here a link to a folder on a bigger disk, keeps being that folder: the
    files land in the link's target, with its permissions, and nothing is left beside it."""
    target = tmp_path / "big_disk" / "out"
    target.mkdir(parents=True)
    os.chmod(target, 0o2775)
    link = tmp_path / "out"
    link.symlink_to(target)
    with atomic_output_dir(link, kind="hf-export") as tmp:
        assert tmp.parent == link  # built inside the folder: the same filesystem, whatever it is
        (tmp / "model.safetensors").write_bytes(b"x")
        (tmp / "sub").mkdir()
    assert link.is_symlink() and _mode(target) == 0o2775
    assert sorted(p.name for p in target.iterdir()) == [".natscale-output", "model.safetensors",
                                                        "sub"]  # fmt: skip
    assert json.loads((target / ".natscale-output").read_text())["entries"] == [
        "model.safetensors", "sub"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_disk", "out"]


@pytest.mark.parametrize("stop", ["error", "ctrl-c"])
def test_a_fill_stopped_while_its_entries_move_is_all_or_nothing(
    tmp_path, monkeypatch, request, stop
):
    """An error while the entries move puts back those moved (the folder is left empty); Ctrl-C
    waits until they all moved (the folder is complete) and is raised after."""
    import signal as signals

    import natscale.atomic as atomic

    out = tmp_path / "out"
    out.mkdir()
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            if stop == "error":
                raise OSError("disk gone")
            signals.raise_signal(signals.SIGINT)
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    # Python's own Ctrl-C handler, whatever the test runner's worker process set (or ignored)
    previous = signals.signal(signals.SIGINT, signals.default_int_handler)
    request.addfinalizer(lambda: signals.signal(signals.SIGINT, previous))
    with (
        pytest.raises(OSError if stop == "error" else KeyboardInterrupt),
        atomic_output_dir(out, kind="prepared") as tmp,
    ):
        for name in ("a", "b", "c"):
            (tmp / name).write_text(name)
    left = sorted(p.name for p in out.iterdir())
    assert left == ([] if stop == "error" else [".natscale-output", "a", "b", "c"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_fill_never_mixes_with_what_appeared_in_the_folder_meanwhile(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with (
        pytest.raises(FileExistsError, match=r"was empty when .* now holds notes\.txt"),
        atomic_output_dir(out, kind="prepared") as tmp,
    ):
        (tmp / "a").write_text("a")
        (out / "notes.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_the_partial_folder_of_a_killed_fill_does_not_make_the_folder_non_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from natscale.atomic import fill_partial_dir

    stale = out / fill_partial_dir(out).name.replace(f"-{os.getpid()}", f"-{dead.pid}")
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    check_destination(out, False, kind="prepared")  # empty but for it
    with atomic_output_dir(out, kind="prepared") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in out.iterdir()) == [".natscale-output", "a"]


def test_overwrite_through_a_link_replaces_the_folder_it_names_and_keeps_the_link(tmp_path):
    target = tmp_path / "big_disk" / "out"
    target.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(target)
    with atomic_output_dir(link, kind="hf-export") as tmp:
        (tmp / "old.safetensors").write_bytes(b"old")
    with atomic_output_dir(link, kind="hf-export", overwrite=True) as tmp:
        assert tmp.parent == target.parent  # beside the folder replaced: the same filesystem
        (tmp / "new.safetensors").write_bytes(b"new")
    assert link.is_symlink() and link.resolve() == target
    assert sorted(p.name for p in target.iterdir()) == [".natscale-output", "new.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_disk", "out"]  # no .out.old-* link
    assert [p.name for p in target.parent.iterdir()] == ["out"]
