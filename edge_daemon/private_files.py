"""Files only the edge's own user may read: folders 0700, files 0600.

An edge's outbox holds the site's measurements, its site file names the cloud endpoint and its key
file, its log shows what the site does; none of it is for other users of the machine. The modes are
set explicitly instead of trusting the umask (0022 on most systems gives 0755 and 0644), and files
left by earlier releases with wider modes are narrowed when they are opened again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Final

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def private_dir(path: Path) -> Path:
    """`mkdir -p path`; every folder it creates is 0700 (existing parents are left as they are)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    return path


def restrict_dir(path: Path) -> Path:
    """Create the folder if needed and make it 0700 even if it existed (a folder of EMMA's own)."""
    private_dir(path)
    os.chmod(path, DIR_MODE)
    return path


def restrict_file(path: Path) -> None:
    """Narrow an existing file to 0600; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, FILE_MODE)


def touch_private(path: Path) -> Path:
    """Create the file 0600 if missing (so whatever opens it next inherits the mode), else narrow it.

    An existing file is changed by path, never opened: closing any descriptor of a file drops every
    POSIX lock this process holds on it, and SQLite locks its database that way, so opening and closing
    an outbox another connection of this process has open would break that connection's locking.
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        os.chmod(path, FILE_MODE)
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private_append(path: Path) -> BinaryIO:
    """A log file opened for appending, 0600."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "ab")


def write_private_text(path: Path, text: str) -> Path:
    """Replace the file atomically with `text`, 0600 (a reader sees the old or the new file, whole)."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
