"""Atomic artefact writes: a temporary file in the target's folder, fsync, then `os.replace`.

Why: an export, checkpoint or JSON report killed mid-write must leave the previous file intact (readers and
servers only ever see a complete old file or a complete new one). Temporary files are named
`.<name>.<pid>-<random>.tmp<suffix>` (hidden, same suffix so that writers that pick a format from the suffix
still work) and are created with the normal umask-respecting mode (0666 & ~umask, usually 0644), never
mkstemp's 0600. A SIGKILL can still leave one behind: `remove_stale_temp_files` deletes those whose writer
process is gone (run it on start / resume).
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]{8}\.tmp(?:\.[^.]+)?$")


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


def remove_stale_temp_files(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete temporary files left in `folder` by killed atomic writes (of target `name` only, when given).

    A file whose writer is still running (its pid is alive) is kept; one without a pid (written by older
    versions) is stale by definition. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
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
