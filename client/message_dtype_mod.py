"""fp16 messages at a site (`federation.message_dtype: fp16`), as a Flower mod around its training handler.

A training message whose config asks for fp16 carries the global shared weights (and the prior) rounded to
fp16: the handler gets them widened to fp32. Its reply's shared weights leave as the fp16 update against what
it received, marked in the site record (ARRAYS_ENCODING); the server adds the update to the same rounded
weights (`pedseg_core.message_dtype`). A reply without shared arrays (SecAgg+ takes them) is left as it is.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flower_common.array_records import to_numpy, to_record
from pedseg_core.message_dtype import FP16_UPDATE, encode_update, widened
from pedseg_core.protocol import ARRAYS, ARRAYS_ENCODING, CONFIG, MESSAGE_DTYPE, PRIOR, SITE


def message_dtype_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    config = msg.content.config_records.get(CONFIG)
    if config is None or config.get(MESSAGE_DTYPE) != "fp16" or ARRAYS not in msg.content.array_records:
        return call_next(msg, context)
    received = widened(to_numpy(msg.content[ARRAYS]))
    msg.content[ARRAYS] = to_record(received)
    if PRIOR in msg.content.array_records:
        msg.content[PRIOR] = to_record(widened(to_numpy(msg.content[PRIOR])))
    reply = call_next(msg, context)
    if reply.has_error() or ARRAYS not in reply.content.array_records:
        return reply
    reply.content[ARRAYS] = to_record(encode_update(to_numpy(reply.content[ARRAYS]), received))
    reply.content[SITE][ARRAYS_ENCODING] = FP16_UPDATE
    return reply
