"""sfdeploy.io: atomic writes keep the old file on failure or kill, use normal permissions, and leave no temp
files behind that a later start does not clean."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sfdeploy.checkpoint import atomic_torch_save, load_checkpoint
from sfdeploy.io import atomic_path, atomic_write, atomic_write_text, remove_stale_temp_files, temp_name

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_pick_a_format_from_it(tmp_path: Path) -> None:
    from PIL import Image

    target = tmp_path / "render.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".render.png.")
        Image.new("RGB", (4, 4)).save(tmp)
    assert Image.open(target).format == "PNG"
    with pytest.raises(FileNotFoundError):  # a writer that wrote nothing must not pass silently
        with atomic_path(tmp_path / "nothing.onnx"):
            pass
    assert not (tmp_path / "nothing.onnx").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_umask_permissions_not_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.yaml", "x: 1\n")
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "b.pt")
        with atomic_path(tmp_path / "c.onnx") as tmp:
            tmp.write_bytes(b"graph")
    finally:
        os.umask(old)
    for name in ("a.yaml", "b.pt", "c.onnx"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".last.pt.{dead_pid}-0123abcd.tmp.pt", tmp_path / ".last.pt.k2j_x9ab.tmp",  # old mkstemp
             tmp_path / f".model.onnx.{dead_pid}-deadbeef.tmp.onnx"]
    alive = temp_name(tmp_path / "best.pt")  # this process: a write in flight
    keep = [alive, tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path, name="model.onnx") == [stale[2]]
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale[:2])
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_checkpoint_killed_mid_save_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    """SIGKILL while torch.save streams the new checkpoint: last.pt stays the old, loadable one."""
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig

    last = tmp_path / "last.pt"
    cfg = ModelConfig(detector="retinanet", class_names=["a"])
    save_checkpoint(last, torch.nn.Linear(2, 2), cfg, meta={"step": 1})
    before = last.read_bytes()
    code = textwrap.dedent(f"""
        import sys, time, torch
        from sfdeploy.checkpoint import save_checkpoint
        from sfdeploy.config import ModelConfig
        real = torch.save
        def slow_save(obj, fh, *a, **k):
            fh.write(b"PK-half-written")
            fh.flush()
            print("WRITING", flush=True)
            time.sleep(60)
        torch.save = slow_save
        save_checkpoint({str(last)!r}, torch.nn.Linear(2, 2), ModelConfig(detector="retinanet", class_names=["a"]),
                        meta={{"step": 2}})
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert last.read_bytes() == before
    assert load_checkpoint(last).meta["step"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1  # SIGKILL cannot clean up; the next start does:
    assert remove_stale_temp_files(tmp_path) == leftovers


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temp_dir_is_removed_however_the_block_ends(tmp_path: Path) -> None:
    from sfdeploy.io import temp_dir

    with temp_dir(tmp_path / "model.onnx") as d:
        (d / "a.onnx").write_bytes(b"x")
        assert d.parent == tmp_path and d.name.startswith(".model.onnx.") and d.name.endswith(".tmpdir")
        assert remove_stale_temp_files(tmp_path) == []  # in use by this (live) process
    with pytest.raises(KeyboardInterrupt):
        with temp_dir(tmp_path / "model.onnx") as d:
            (d / "sub").mkdir()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_dirs_go_only_when_their_writer_is_gone(tmp_path: Path) -> None:
    """Ours by name, writer's pid dead here, lock free: removed. Held lock (a writer this host cannot see), live
    pid, a fresh folder without its lock file, other names: kept."""
    import fcntl

    pid = _dead_pid()
    stale = tmp_path / f".model.onnx.{pid}-0123abcd.tmpdir"
    locked = tmp_path / f".model.onnx.{pid}-4567abcd.tmpdir"
    live = tmp_path / f".model.onnx.{os.getpid()}-89abcdef.tmpdir"
    fresh_unlocked = tmp_path / f".model.onnx.{pid}-0000abcd.tmpdir"
    old_unlocked = tmp_path / f".model.onnx.{pid}-1111abcd.tmpdir"
    other_target = tmp_path / f".best.onnx.{pid}-2222abcd.tmpdir"
    not_ours = [tmp_path / f".model.onnx.{pid}-XYZ.tmpdir", tmp_path / ".quant-notes", tmp_path / "runs"]
    for d in [stale, locked, live, fresh_unlocked, old_unlocked, other_target] + not_ours:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "model.int8.onnx").write_bytes(b"half")
    for d in (stale, locked, live, other_target):
        (d / ".lock").touch()
    old = os.stat(old_unlocked).st_mtime - 3600
    os.utime(old_unlocked, (old, old))
    with open(locked / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = remove_stale_temp_files(tmp_path, name="model.onnx")
    assert sorted(removed) == sorted([stale, old_unlocked])
    assert sorted(tmp_path.iterdir()) == sorted([locked, live, fresh_unlocked, other_target] + not_ours)
    # the lock released (its writer died) and no name given (every target's): those go too
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([locked, other_target])
