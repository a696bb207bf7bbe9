"""How the arrays travel, the server's side: the shared weights and the prior packed into one Array per record
(fewer objects per message: `pedseg_core.packed_arrays`), and under `federation.message_dtype: fp16` rounded to
fp16 on the way down, with the sites' fp16 updates turned back into weights (the rounded global + the update,
`pedseg_core.message_dtype`). Replies are unpacked and decoded before anything checks them. Under SecAgg+
neither applies: it carries the arrays its own way."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from flower_common.array_records import packed, to_numpy, to_record, unpacked
from pedseg_core.message_dtype import FP16_UPDATE, decode_update, rounded, widened
from pedseg_core.protocol import ARRAYS, ARRAYS_ENCODING, MESSAGE_DTYPE, PACKED_JSON, PRIOR, SITE


class Wire:
    """This round's records as they travel down, and what replies are decoded against."""

    def __init__(self, fp16: bool, pack: bool) -> None:
        self.fp16, self.pack = fp16, pack
        self.down: dict[str, ArrayRecord] = {}  # ARRAYS (and PRIOR) as they travel
        self.index: dict[str, list] = {}  # the packed ones' indexes
        self.reference: dict[str, np.ndarray] = {}  # fp16: what the sites train from (the rounded global, fp32)
        self.seen: dict[int, Message] = {}  # the replies decoded since `prepare`, by id()

    def prepare(self, arrays: ArrayRecord, prior: ArrayRecord | None, config: ConfigRecord) -> None:
        """The round's global arrays (and the prior) for the wire; `config` tells the sites about fp16."""
        down = {ARRAYS: arrays, **({PRIOR: prior} if prior is not None else {})}
        self.index, self.seen = {}, {}
        if not (self.fp16 or self.pack):
            self.down = down
            return
        values = {name: to_numpy(record) for name, record in down.items()}
        if self.fp16:
            config[MESSAGE_DTYPE] = "fp16"
            values = {name: rounded(arrays) for name, arrays in values.items()}
            self.reference = widened(values[ARRAYS])
        if self.pack:
            for name, arrays in values.items():
                down[name], self.index[name] = packed(arrays)
        else:
            down = {name: to_record(arrays) for name, arrays in values.items()}
        self.down = down

    def records(self, names: tuple[str, ...]) -> tuple[dict[str, ArrayRecord], dict[str, str]]:
        """(the records `names` as they travel, the config entry that names the packed ones among them)."""
        records = {name: self.down[name] for name in names if name in self.down}
        index = {name: self.index[name] for name in records if name in self.index}
        return records, ({PACKED_JSON: json.dumps(index, separators=(",", ":"))} if index else {})

    def decoded(self, reply: Message) -> Message:
        """A reply with its packed records unpacked and an fp16 update turned into weights, in place. A reply that
        does not unpack or decode stays as it came, packed or fp16: the update checks reject it (a foreign key, or
        fp16 where the global weights are fp32). The grid calls this as each reply arrives and the strategy again
        when it aggregates: a second call returns the reply as it is."""
        if self.seen.get(id(reply)) is reply or reply.has_error() or SITE not in reply.content.config_records:
            return reply
        self.seen[id(reply)] = reply
        site = reply.content[SITE]
        try:
            records = unpacked(reply.content, str(site[PACKED_JSON])) if site.get(PACKED_JSON) else {}
            if site.get(ARRAYS_ENCODING) == FP16_UPDATE and ARRAYS in reply.content.array_records:
                update = records[ARRAYS] if ARRAYS in records else to_numpy(reply.content[ARRAYS])
                records[ARRAYS] = decode_update(update, self.reference)
        except Exception:  # noqa: BLE001 - whatever a site sent, the server goes on
            return reply
        for name, arrays in records.items():
            reply.content[name] = to_record(arrays)
        return reply
