"""fp16 messages (`federation.message_dtype: fp16`), the server's side: the shared arrays and the prior travel
down rounded to fp16, and the sites' fp16 updates come back, which the server turns into weights (the rounded
global + the update) before it checks them. See `pedseg_core.message_dtype`."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from pedseg_core.message_dtype import FP16_UPDATE, decode_update, rounded, widened
from pedseg_core.protocol import ARRAYS, ARRAYS_ENCODING, MESSAGE_DTYPE, PRIOR, SITE
from server.array_records import to_numpy, to_record


class Fp16Wire:
    """This round's records as they travel down, and the fp32 reference the sites' updates are relative to."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.on_wire: dict[str, ArrayRecord] = {}  # ARRAYS (and PRIOR) in fp16, in place of the fp32 ones
        self.reference: dict[str, np.ndarray] = {}  # what the sites train from: the rounded global, widened

    def prepare(self, arrays: ArrayRecord, prior: ArrayRecord | None, config: ConfigRecord) -> None:
        """Round this round's global arrays (and the prior) for the wire, and tell the sites in `config`."""
        if not self.enabled:
            return
        config[MESSAGE_DTYPE] = "fp16"
        down = rounded(to_numpy(arrays))
        self.reference = widened(down)
        self.on_wire = {ARRAYS: to_record(down)}
        if prior is not None:
            self.on_wire[PRIOR] = to_record(rounded(to_numpy(prior)))

    def decoded(self, reply: Message) -> Message:
        """A reply whose shared arrays are an fp16 update, with them as weights; any other reply as it is."""
        if reply.has_error() or SITE not in reply.content.config_records or \
                reply.content[SITE].get(ARRAYS_ENCODING) != FP16_UPDATE or ARRAYS not in reply.content.array_records:
            return reply
        try:
            sent = to_numpy(reply.content[ARRAYS])
        except Exception:  # noqa: BLE001 - an undecodable array: the update checks reject the reply for it
            return reply
        reply.content[ARRAYS] = to_record(decode_update(sent, self.reference))
        return reply
