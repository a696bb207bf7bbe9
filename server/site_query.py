"""The query that opens a run: once the quorum is connected, every connected site says who it is (site, joint)
and which labels its dataset.json declares; no data leaves. It gives the union label space of the `shared`
and `full` schemes, and tells the strategy which node is which site before any round (a resumed run sends
each joint's pooled head from its first round on)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from pedseg_core.data.union_labels import union_label_space
from pedseg_core.errors import PedsegError
from pedseg_core.protocol import ASK, ASK_LABELS, CONFIG, LABELS_JSON, SITE
from server.quorum import wait_for_quorum
from server.update_checks import UpdateRejected, check_identity


@dataclass(frozen=True)
class SiteIdentity:
    site: str
    joint: str
    labels: dict[str, int]


def site_identity(reply: Message) -> SiteIdentity:
    """The identity a label-query reply declares: valid site and joint names, labels a JSON object of label
    names to integers."""
    site, joint = check_identity(reply)
    text = reply.content[SITE].get(LABELS_JSON)
    try:
        labels = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        labels = None
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        raise UpdateRejected(f"{LABELS_JSON} is not a JSON object of label names to integers")
    return SiteIdentity(site, joint, labels)


def query_sites(grid: Grid, min_nodes: int, quorum_timeout: float, timeout: float) -> dict[int, SiteIdentity]:
    """Node id -> identity of every connected site that answered (at least `min_nodes` must be connected)."""
    node_ids = wait_for_quorum(grid, min_nodes, quorum_timeout, "the label query")
    replies = grid.send_and_receive([Message(RecordDict({CONFIG: ConfigRecord({ASK: ASK_LABELS})}),
                                             message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids],
                                    timeout=timeout)
    sites = {}
    for reply in replies:
        if reply.has_error():
            log(WARNING, "node %s answered the label query with an error: %s", reply.metadata.src_node_id,
                reply.error.reason)
            continue
        try:
            sites[reply.metadata.src_node_id] = site_identity(reply)
        except UpdateRejected as err:  # a malformed answer counts as none
            log(WARNING, "node %s answered the label query malformed: %s", reply.metadata.src_node_id, err)
    if not sites:
        raise PedsegError("no site answered the label query")
    return sites


def union_labels(sites: dict[int, SiteIdentity]) -> tuple[dict[str, int], dict[str, int]]:
    """(union label space, offset of each joint's bones in it); sites of one joint must declare the same
    labels."""
    labels_of: dict[str, dict[str, int]] = {}
    for identity in sites.values():
        if labels_of.setdefault(identity.joint, identity.labels) != identity.labels:
            raise PedsegError(f"sites of joint '{identity.joint}' declare different labels: "
                              f"{labels_of[identity.joint]} vs {identity.labels}")
    joints = sorted(labels_of)
    union, offsets = union_label_space([labels_of[j] for j in joints], joints)
    return union, dict(zip(joints, offsets))
