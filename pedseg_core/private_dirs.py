"""Private folders: a site's state folder and its run folders are its account's alone (0700), and every file
pedseg writes into such a folder is too (0600, `atomic_files.write_atomically`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (0700), created with any missing parents (0700 too); an
    existing one is tightened to 0700."""
    path = Path(path)
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def is_private_dir(path: Path) -> bool:
    """Whether `path` is a folder that neither its group nor other accounts can read, write or enter."""
    mode = os.stat(path).st_mode
    return stat.S_ISDIR(mode) and not mode & 0o077


def make_dir_like_ancestor(path: Path) -> None:
    """Create the folder `path` (and its missing parents), private when its nearest existing ancestor is."""
    path = Path(path)
    if path.is_dir():
        return
    ancestor = next(parent for parent in path.parents if parent.exists())
    if ancestor.is_dir() and is_private_dir(ancestor):
        make_private_dir(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
