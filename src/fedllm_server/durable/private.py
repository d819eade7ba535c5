"""State files are the operator's alone: created (and kept) 0600, whatever the umask.

Why both the open mode and `fchmod`: the mode given to `open` is filtered by the umask (a
umask of 0277 would leave 0400) and an existing file keeps whatever mode it was created with
(a state_dir written before this rule was 0644); `fchmod` on the open descriptor sets exactly
0600 without a window where another user could open it by name.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o600


def open_private(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_CREAT)` with the file made 0600; returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: Path) -> None:
    """Create `path` if missing (empty) and make it 0600; its content is left alone."""
    os.close(open_private(path, os.O_WRONLY))
