"""The one rule for site and joint names, checked by every command that takes one: they name folders, files and
processes, so only letters, digits, '.', '_' and '-', starting with a letter or digit. Any such name is a joint
(real data brings new joints); which joints a dataset's labels know is the joint catalogue's business."""

from __future__ import annotations

import re

from pedseg_core.errors import PedsegError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(value: str, kind: str, option: str) -> str:
    """`value` when it is a valid site or joint name (`kind`: "site" or "joint"), else a PedsegError naming the
    `option` the user typed (e.g. "--site" or "--data a/b:knee=DIR")."""
    if not NAME.fullmatch(value):
        raise PedsegError(f"{option}: {kind} name '{value}' may hold only letters, digits, '.', '_' and '-', "
                          "starting with a letter or digit")
    return value
