"""The joint catalogue: which bones each joint's dataset labels, in label order."""

from __future__ import annotations

from pedseg_core.errors import PedsegError

JOINT_BONES: dict[str, tuple[str, ...]] = {
    "ankle": ("tibia", "talus", "calcaneus"),
    "knee": ("femur", "tibia", "patella"),
    "shoulder": ("humerus", "scapula"),
}


def joint_labels(joint: str) -> dict[str, int]:
    """The dataset.json label map of ``joint``: ``{"background": 0, <bone1>: 1, <bone2>: 2, ...}``."""
    if joint not in JOINT_BONES:
        raise PedsegError(f"unknown joint {joint!r}; known joints: {', '.join(JOINT_BONES)}")
    return {"background": 0, **{bone: value for value, bone in enumerate(JOINT_BONES[joint], start=1)}}
