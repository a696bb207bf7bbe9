"""Packed arrays at a site, as the outermost Flower mod: a message whose config names packed records
(PACKED_JSON) has them unpacked before anything else sees it, and the reply to it leaves with its shared
weights packed the same way (`flower_common.array_records`). Everything inside, the audit log included, sees
the arrays one by one; the packed form carries the same bytes."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flower_common.array_records import pack_records, unpack_records
from pedseg_core.protocol import ARRAYS, CONFIG, PACKED_JSON, SITE


def packed_arrays_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    config = msg.content.config_records.get(CONFIG)
    if config is None or not config.get(PACKED_JSON):
        return call_next(msg, context)
    unpack_records(msg.content, str(config.pop(PACKED_JSON)))
    reply = call_next(msg, context)
    if reply.has_error() or ARRAYS not in reply.content.array_records or SITE not in reply.content.config_records:
        return reply
    reply.content[SITE][PACKED_JSON] = pack_records(reply.content, (ARRAYS,))
    return reply
