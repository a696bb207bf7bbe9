"""Progress of long work: bars on a terminal; where a count of steps matters off one too (a log, a pipe), one
plain line per step."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable, desc: str | None, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm that is off when not `enabled` and also when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


class StepProgress:
    """`done` of `total` steps on stderr: a bar on a terminal; elsewhere a line "DESC: N of TOTAL UNITs" each
    time the count grows. Silent when not `enabled`."""

    def __init__(self, desc: str, total: int, unit: str, enabled: bool = True) -> None:
        self.desc, self.total, self.unit, self.done = desc, total, unit, 0
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = progress_bar(None, desc, enabled and not self.lines, total=total, unit=unit)

    def show(self, done: int) -> None:
        if done <= self.done:
            return
        self.bar.update(done - self.done)
        self.done = done
        if self.lines:
            print(f"{self.desc}: {done} of {self.total} {self.unit}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
