"""Files written atomically: into a temporary file beside the target, then renamed onto it, so a reader (or a
run resumed after a kill) never sees half a file. The one helper every writer of pedseg's run files uses.

A file written into a private folder (0700, `private_dirs`) is private too (0600), as are folders it creates
below one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from pedseg_core.private_dirs import PRIVATE_FILE_MODE, is_private_dir, make_dir_like_ancestor


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a temporary file next to `path`, which then replaces `path`; on any failure the
    temporary file goes and `path` is as it was."""
    path = Path(path)
    make_dir_like_ancestor(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # created by `write`: the umask's permissions
    try:
        write(tmp)
        if is_private_dir(path.parent):
            os.chmod(tmp, PRIVATE_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
