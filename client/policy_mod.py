"""The site's privacy policy as a Flower mod around its training and evaluation handlers.

Before a message is handled, a pooled head the policy does not let this site share is neither asked for nor
taken; after, the reply is cut to what the policy grants: no per-case metrics unless allowed (the server gets
per-bone means and the case count), no prototypes unless allowed and each over enough slices, no head unless
allowed. What the run asked and the policy refused goes back in the site record (REFUSALS_JSON), for the
run's metrics.jsonl.
"""

from __future__ import annotations

import json

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from client.node_settings import node_settings, site_config, site_policy
from pedseg_core.policy import Requests
from pedseg_core.protocol import (
    CONFIG,
    HEAD,
    METRICS,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    REFUSALS_JSON,
    RESULT_JSON,
    SHARE_HEAD,
    SITE,
)


def policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type not in (MessageType.TRAIN, MessageType.EVALUATE) or CONFIG not in msg.content:
        return call_next(msg, context)
    cfg = site_config(context)
    config = msg.content[CONFIG]
    asked = Requests(per_case_metrics=cfg.federation.per_case_metrics,
                     share_prototypes=cfg.contrastive.share_prototypes,
                     min_prototype_slices=cfg.contrastive.min_prototype_slices,
                     share_head=bool(config.get(SHARE_HEAD, False)))
    granted, refusals = site_policy(node_settings(context)).grant(asked)
    if not granted.share_head:  # the site keeps its own head: it neither sends it nor takes the pooled one
        config[SHARE_HEAD] = False
        if HEAD in msg.content:
            del msg.content[HEAD]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    if PROTOTYPES in content and not (granted.share_prototypes and
                                      content[METRICS].get(PROTOTYPE_SLICES, 0) >= granted.min_prototype_slices):
        del content[PROTOTYPES]
        del content[METRICS][PROTOTYPE_SLICES]
    if HEAD in content and not granted.share_head:
        del content[HEAD]
    if SITE in content.config_records and RESULT_JSON in content[SITE] and not granted.per_case_metrics:
        result = json.loads(str(content[SITE][RESULT_JSON]))
        result.pop("per_case", None)
        content[SITE][RESULT_JSON] = json.dumps(result)
    if refusals and SITE in content.config_records:  # after the algorithm's own (a withheld evaluation)
        earlier = json.loads(str(content[SITE][REFUSALS_JSON])) if REFUSALS_JSON in content[SITE] else []
        content[SITE][REFUSALS_JSON] = json.dumps([*earlier, *refusals])
    return reply
