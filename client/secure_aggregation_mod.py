"""SecAgg+ at a site: Flower's `secaggplus_mod` around pedseg's training handler, for `server.secure_aggregation`.

A training message that carries SecAgg+'s stage record goes through Flower's mod. In the stage that trains,
pedseg's handler runs as it always does; its reply is then turned into what the mod masks: the shared-weight
update (its shared weights minus the global ones the server sent, in sorted key order) as the legacy
`fitres.parameters`, with weight 1. The mod clears every array record of the reply after masking; the
prototypes and the pooled head (which SecAgg+ does not cover) are put back, in clear, as without SecAgg+.

Checks Flower's client lacks, each refusing the round with one line:
- the set of sites must be at least 3 (with 2, the server knows a site's private mask after unmasking and
  could brute-force the one 32-bit pairwise seed left; see docs/decisions/0004-secure-aggregation-legacy-workflow.md);
- the unmasking threshold must be a strict majority of the share holders (2 t > n);
- the server may never ask for both kinds of shares of one node (alive and dropped: that would unmask it);
- the shared keys must be exactly those received, and the update must lie within the clipping range (the
  server cannot check a masked vector; SecAgg+ would clip it silently).
A site whose policy has `require_secure_aggregation: true` refuses every plain training round.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage

from client.node_settings import node_settings, site_policy
from pedseg_core.errors import PedsegError
from pedseg_core.protocol import ARRAYS

MIN_SITES = 3


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    site = str(node_settings(context)["site"])
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if stage is None:
        if site_policy(node_settings(context)).require_secure_aggregation:
            raise PedsegError(f"site {site}: its policy sends shared weights only under secure aggregation "
                              f"(SecAgg+), which this run does not use (federation.secure_aggregation)")
        return call_next(msg, context)
    check_stage(stage, site)
    in_clear: dict[str, ArrayRecord] = {}

    def train_and_mask(message: Message, ctx: Context) -> Message:
        reply = call_next(message, ctx)
        clipping = float(ctx.state.config_records[RECORD_KEY_STATE][Key.CLIPPING_RANGE])
        as_masked_update(reply, message.content[ARRAYS], clipping, site, in_clear)
        return reply

    out = secaggplus_mod(msg, context, train_and_mask)
    for name, record in in_clear.items():
        out.content[name] = record
    return out


def check_stage(stage: ConfigRecord, site: str) -> None:
    """Refuse SecAgg+ parameters or requests that would let the server learn one site's update."""
    if stage[Key.STAGE] == Stage.SETUP:
        if int(stage[Key.SAMPLE_NUMBER]) < MIN_SITES:
            raise PedsegError(f"site {site}: secure aggregation over {stage[Key.SAMPLE_NUMBER]} sites is refused "
                              f"(at least {MIN_SITES}: with fewer the server could recover a site's update)")
        if 2 * int(stage[Key.THRESHOLD]) <= int(stage[Key.SHARE_NUMBER]):
            raise PedsegError(f"site {site}: secure aggregation with threshold {stage[Key.THRESHOLD]} of "
                              f"{stage[Key.SHARE_NUMBER]} shares is refused (a strict majority is needed)")
    if stage[Key.STAGE] == Stage.UNMASK:
        both = set(stage[Key.ACTIVE_NODE_ID_LIST]) & set(stage[Key.DEAD_NODE_ID_LIST])
        if both:
            raise PedsegError(f"site {site}: the server asked for both kinds of shares of node(s) "
                              f"{sorted(both)}, which would unmask them: refused")


def as_masked_update(reply: Message, received: ArrayRecord, clipping: float, site: str,
                     in_clear: dict[str, ArrayRecord]) -> None:
    """Turn pedseg's training reply (in place) into SecAgg+'s legacy fit result: `fitres.parameters` = the
    update per shared key (sorted), weight 1; every other array record moves to `in_clear`."""
    content = reply.content
    shared = content[ARRAYS]
    if set(shared.keys()) != set(received.keys()):
        raise PedsegError(f"site {site}: its reply's shared keys differ from the global ones")
    update = {}
    for key in sorted(received.keys()):
        new, old = shared[key].numpy(), received[key].numpy()
        if not np.issubdtype(old.dtype, np.floating):
            raise PedsegError(f"site {site}: secure aggregation needs floating-point shared weights ({key} is "
                              f"{old.dtype})")
        delta = new.astype(np.float64) - old
        if np.abs(delta).max(initial=0.0) > clipping:
            raise PedsegError(f"site {site}: its update of {key} exceeds SecAgg+'s clipping range {clipping:g}")
        update[key] = Array(delta)
    for name in list(content.array_records.keys()):
        if name != ARRAYS:
            in_clear[name] = content[name]
        del content[name]
    content["fitres.parameters"] = ArrayRecord(update)
    content["fitres.num_examples"] = MetricRecord({"num_examples": 1})
    content["fitres.metrics"] = ConfigRecord({})
    content["fitres.status"] = ConfigRecord({"code": 0, "message": "OK"})
