"""Crash-safe file writes shared by the daemons and the certificate tooling.

Rule: a reader (or a process restarted after ``kill -9``) sees either the old file or all of
the new one, never a mix: write a temp file in the same directory (created with the final
mode, so a key is never briefly world-readable), fsync it, rename it over the target, then
fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | memoryview, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``."""
    atomic_write_parts(path, [data], mode)


def atomic_write_parts(path: Path, parts: Iterable[bytes | memoryview], mode: int = 0o644) -> None:
    """As `atomic_write`, with the content given as pieces written in order (never joined,
    so large buffers are written from where they lie)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover from a crash would keep its old mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exactly `mode`: the umask filtered what open() applied
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
