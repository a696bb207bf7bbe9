"""Each node's own copy of the message a Flower strategy addressed to it: Flower's stock strategies send every
node the same content, while pedseg adds what differs per node (its joint's pooled head, whether it shares a
head) and what Flower does not know of (the prototypes, the prior, the fp16 arrays)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from pedseg_core.protocol import CONFIG


def for_node(msg: Message, config: dict, records: dict[str, ArrayRecord]) -> Message:
    """`msg` for its node, its config extended by `config` and its records by `records` (which replace any of
    the same name); the original, and the content Flower shares between nodes, are not changed."""
    content = RecordDict(dict(msg.content.items()))
    content.update(records)
    content[CONFIG] = ConfigRecord({**dict(msg.content[CONFIG].items()), **config})
    return Message(content=content, message_type=msg.metadata.message_type, dst_node_id=msg.metadata.dst_node_id)
