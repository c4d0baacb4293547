"""Atomic artefact writes: a temporary file in the target's folder, fsync, then `os.replace`.

Why: an export, checkpoint or JSON report killed mid-write must leave the previous file intact (readers and
servers only ever see a complete old file or a complete new one). Temporary files are named
`.<name>.<pid>-<random>.tmp<suffix>` (hidden, same suffix so that writers that pick a format from the suffix
still work) and are created with the normal umask-respecting mode (0666 & ~umask, usually 0644), never
mkstemp's 0600. A SIGKILL can still leave one behind: `remove_stale_temp_files` deletes those whose writer
process is gone (run it on start / resume). Multi-file staging (ORT's quantizer, a Triton model before it is copied
into the repository) uses `temp_dir`: `.<name>.<pid>-<random>.tmpdir`, locked while in use, cleaned the same way.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: liveness falls back to the writer's pid alone
    fcntl = None  # type: ignore[assignment]

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]{8}\.tmp(?:\.[^.]+)?$")
_TEMP_DIR_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmpdir$")
_LOCK_NAME = ".lock"
UNLOCKED_DIR_MIN_AGE_S = 600.0  # a temp folder without its lock file is only removed once older than this


def temp_name(path: Path) -> Path:
    """A fresh temporary path next to `path` (not created)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a library that writes by file name (onnx.save, PIL, ...);
    on success it replaces `path`, on any exception (KeyboardInterrupt included) it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} (for {path})")
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path` for writing ("wb" or "w"); it replaces `path` when the block ends
    without an exception and is deleted otherwise."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, unlike mkstemp
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


@contextmanager
def temp_dir(path: str | Path) -> Iterator[Path]:
    """A fresh folder next to `path` for work that writes several files (ORT's quantizer, a Triton model staged
    before it is copied into the repository); deleted when the block ends, however it ends.

    While the block runs this process holds an exclusive lock on `<folder>/.lock`, so another process's
    `remove_stale_temp_files` never takes a folder in use, even when it cannot see the writer's pid (another
    container on a shared volume). A SIGKILL releases the lock: the next cleanup removes the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmpdir")
    folder.mkdir()
    lock = None
    try:
        lock = _lock(folder / _LOCK_NAME, create=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _lock(path: Path, *, create: bool) -> int | None:
    """A descriptor holding an exclusive lock on `path`; None when the file is missing, not ours to open, or locked
    by another process."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except OSError:  # missing, or another user's
        return None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process
        os.close(fd)
        return None
    return fd


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_dir(folder: Path, pid: int) -> bool:
    """Delete a `temp_dir` folder whose writer is gone: its pid is dead here and nobody holds its lock. One without a
    lock file (its writer was killed between mkdir and lock) goes only once older than UNLOCKED_DIR_MIN_AGE_S."""
    if folder.is_symlink() or not folder.is_dir() or _alive(pid):
        return False
    lock = _lock(folder / _LOCK_NAME, create=False)
    try:
        if lock is None and ((folder / _LOCK_NAME).exists()
                             or time.time() - folder.stat().st_mtime < UNLOCKED_DIR_MIN_AGE_S):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    except OSError:  # removed meanwhile by another cleanup
        return False
    finally:
        if lock is not None:
            os.close(lock)


def remove_stale_temp_files(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete temporary files and `temp_dir` folders left in `folder` by killed writers (of target `name` only,
    when given).

    A file whose writer is still running (its pid is alive) is kept; one without a pid (written by older
    versions) is stale by definition. A folder goes only when its writer's pid is dead and its lock is free.
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        d = _TEMP_DIR_RE.match(entry.name)
        if d is not None:
            if (name is None or d.group("name") == name) and _remove_stale_dir(entry, int(d.group("pid"))):
                removed.append(entry)
            continue
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file() or (name is not None and m.group("name") != name):
            continue
        pid = m.group("pid")
        if pid is not None and _alive(int(pid)):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed
