"""What the sites of one joint pool through the server: the contrastive prototypes (per joint and scale) and,
for a joint held by several sites, its head. Both go back to the sites with the next round's message; a site's
normalization layers are never pooled."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from flower_common.array_records import to_record
from pedseg_core.protocol import HEAD, JOINT, METRICS, PROTOTYPE_SEP, PROTOTYPE_SLICES, PROTOTYPES, SITE


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of same-shaped arrays [N sites, *shape] -> [*shape], in the dtype of the first (integers
    rounded).

    Not Flower's `aggregate_arrayrecords`: it needs every record to hold every key, where prototypes and pooled
    heads are averaged over the sites that sent the key."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    mean = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays))
    dtype = arrays[0].dtype
    return np.asarray(np.rint(mean) if np.issubdtype(dtype, np.integer) else mean).astype(dtype)


class DomainPools:
    """The pooled prototypes ("<joint>|<scale>" -> mean projected embedding [D]) and heads (joint -> its
    head's arrays)."""

    def __init__(self) -> None:
        self.prototypes: dict[str, np.ndarray] = {}
        self.joint_heads: dict[str, dict[str, np.ndarray]] = {}

    def records_for(self, joint: str | None) -> dict[str, ArrayRecord]:
        """What a node of `joint` gets with its message: every joint's prototypes, its joint's pooled head."""
        records = {}
        if self.prototypes:
            records[PROTOTYPES] = to_record(self.prototypes)
        if joint in self.joint_heads:
            records[HEAD] = to_record(self.joint_heads[joint])
        return records

    def heads_as_arrays(self) -> dict[str, dict[str, Array]]:
        """The pooled heads as the update checks compare against them."""
        return {j: {k: Array(v) for k, v in h.items()} for j, h in self.joint_heads.items()}

    def pool(self, replies: list[Message], weights: list[float]) -> dict:
        """Pool the checked replies' prototypes (weighted by their mask slices) and heads (by `weights`, their
        examples); returns what the round's record says of it."""
        sent = [(m.content[PROTOTYPES], float(m.content[METRICS][PROTOTYPE_SLICES]))
                for m in replies if PROTOTYPES in m.content]
        keys = {k for record, _ in sent for k in record.keys()}
        self.prototypes = {k: weighted_mean([r[k].numpy() for r, _ in sent if k in r],
                                             [w for r, w in sent if k in r]) for k in sorted(keys)}
        by_joint: dict[str, list[tuple[ArrayRecord, float]]] = {}
        for msg, w in zip(replies, weights):
            if HEAD in msg.content:  # only joints with several sites are asked to send their heads
                by_joint.setdefault(str(msg.content[SITE][JOINT]), []).append((msg.content[HEAD], w))
        for joint, heads in by_joint.items():
            self.joint_heads[joint] = {k: weighted_mean([r[k].numpy() for r, _ in heads], [w for _, w in heads])
                                       for k in heads[0][0].keys()}
        return {"prototype_joints": sorted({k.split(PROTOTYPE_SEP)[0] for k in keys}),
                "pooled_heads": sorted(by_joint)}

    def state_dict(self) -> dict:
        return {"prototypes": {k: torch.from_numpy(v) for k, v in self.prototypes.items()},
                "joint_heads": {j: {k: torch.from_numpy(v) for k, v in h.items()} for j, h in self.joint_heads.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.prototypes = {k: v.numpy() for k, v in state["prototypes"].items()}
        self.joint_heads = {j: {k: v.numpy() for k, v in h.items()} for j, h in state["joint_heads"].items()}
