"""Files and directories only the user running Hestia may read.

The data directory holds what others must not read: API key hashes, the activity history,
backends' logs (which may print tokens), process records. The umask decides nothing here: a
common umask (022) would make all of it world-readable, so each file and directory Hestia makes
gets its mode set explicitly, 0600 for files and 0700 for directories.

A directory Hestia did not make (`data_dir` given as an existing directory) keeps its mode: it
may be shared on purpose. `data_dir_warning` says when it lets others in; the files and the
subdirectories Hestia keeps in it are private either way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

__all__ = ["FILE_MODE", "DIR_MODE", "data_dir_warning", "open_private", "private_dir",
           "tighten"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path, *, tighten_existing: bool = True) -> Path:
    """Make sure the directory `path` exists, mode 0700 when made now (its missing parents
    get the usual modes, as `mkdir -p` gives them). An existing one is set to 0700 too, unless
    `tighten_existing` is false. Raises `OSError` when it cannot be made."""
    try:
        path.mkdir(mode=DIR_MODE)
        made = True
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return private_dir(path, tighten_existing=tighten_existing)
    except FileExistsError:
        made = False
    if made or tighten_existing:
        tighten(path, DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Set `path`'s mode to `mode` when others or the group could use it; a file that is not
    there, or not ours to change, is left alone."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & 0o077 or current & mode != mode:
            os.chmod(path, mode)
    except (FileNotFoundError, PermissionError):
        pass


def open_private(path: Path, mode: str = "ab", **kwargs: Any) -> IO[Any]:
    """`open(path, mode)` that creates the file 0600, and makes an existing one 0600 (a log
    written by an older Hestia, say). `mode` is one of `open`'s writing modes."""
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC if "w" in mode else 0
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            try:
                os.fchmod(fd, FILE_MODE)
            except PermissionError:
                pass  # someone else's file that we may write to: theirs to protect
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def data_dir_warning(path: Path) -> str | None:
    """Why the data directory `path` lets others in, or None when it does not."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"{path} has mode {mode:04o}: others can list it (the files in it are private "
            f"all the same); `chmod 700 {path}` if it is not shared on purpose")
