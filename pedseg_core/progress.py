"""Progress bars for long work: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable, desc: str | None, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm that is off when not `enabled` and also when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
