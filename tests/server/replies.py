"""Site replies as the ServerApp receives them (real Flower Messages with a sender's metadata), for tests."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

GLOBAL = {"enc.weight": np.zeros((4, 3), np.float32), "dec.bias": np.zeros(4, np.float32)}


def reply(node: int, site: str, joint: str = "ankle", shift: float = 0.1, examples: float = 12,
          arrays: dict[str, np.ndarray] | None = None, **records) -> Message:
    """A training reply from `node`: the global arrays moved by `shift`, `examples` examples, plus `records`."""
    sent = {k: v + shift for k, v in GLOBAL.items()} if arrays is None else arrays
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
                          "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0}),
                          "site": ConfigRecord({"site": site, "joint": joint}), **records})
    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id=f"to-{node}",
                        group_id="1", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def global_arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def result_json(mean_dice: float = 0.9) -> str:
    return json.dumps({"dice": {"a": mean_dice}, "hd95": {"a": 1.0}, "assd": {"a": 0.5}, "mean_dice": mean_dice})
