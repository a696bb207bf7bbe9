"""Files written atomically: into a temporary file beside the target, then renamed onto it, so a reader (or a
run resumed after a kill) never sees half a file. The one helper every writer of pedseg's run files uses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a temporary file next to `path`, which then replaces `path`; on any failure the
    temporary file goes and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # created by `write`: the umask's permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
