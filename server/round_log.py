"""The record of one round, which becomes its line in metrics.jsonl: who contributed with what metrics, who was
rejected and why, who answered with an error or not at all, what each site's policy refused, the update norms,
the training loss and how long aggregation and the round took."""

from __future__ import annotations

import json
import time
from logging import WARNING

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log

from pedseg_core.protocol import JOINT, METRICS, REFUSALS_JSON, SITE, SITE_NAME, TRAIN_LOSS
from server.site_roster import SiteRoster


class RoundLog:
    """This round's record, the messages sent in it, and the notes the strategy makes on its replies."""

    def __init__(self, roster: SiteRoster) -> None:
        self.roster = roster
        self.record: dict = {}
        self.sent: list[Message] = []  # this round's messages (Flower sets their ids when it sends them)
        self.started = time.perf_counter()

    def begin(self, server_round: int) -> None:
        self.record = {"round": server_round, "started_at": round(time.time(), 3), "sites": {}, "errors": [],
                       "rejected": []}
        self.started = time.perf_counter()

    def finish(self) -> dict:
        """The record, with the round's wall time (to its end; the time to the next round's `started_at` also
        holds the server's state save)."""
        self.record["round_time_s"] = round(time.perf_counter() - self.started, 3)
        return self.record

    def site_of(self, reply: Message) -> str:
        """The site of a checked reply (the roster learns its node), noting what its policy refused."""
        site = self.roster.learn(reply)
        if REFUSALS_JSON in reply.content[SITE]:  # what the site's policy refused of this run's requests
            try:
                refused = json.loads(str(reply.content[SITE][REFUSALS_JSON]))
            except ValueError:
                refused = [str(reply.content[SITE][REFUSALS_JSON])]
            self.record.setdefault("policy_refusals", {})[site] = refused
        return site

    def note_training(self, valid: list[Message], weights: list[float]) -> float:
        """Each contributing site's metrics, the example count and the example-weighted training loss (sites
        training under DP send no loss); returns the loss (NaN when no site sent one)."""
        for msg in valid:
            self.record["sites"][self.site_of(msg)] = {"joint": msg.content[SITE][JOINT],
                                                       **dict(msg.content[METRICS].items())}
        with_loss = [(m, w) for m, w in zip(valid, weights) if TRAIN_LOSS in m.content[METRICS]]
        loss = (sum(w * float(m.content[METRICS][TRAIN_LOSS]) for m, w in with_loss) / sum(w for _, w in with_loss)
                if with_loss else float("nan"))
        self.record["train_loss"] = loss
        self.record["examples"] = float(sum(weights))
        return loss

    def note_rejected(self, rejected: list[tuple[Message, str]]) -> None:
        for msg, reason in rejected:
            claimed = msg.content[SITE].get(SITE_NAME) if SITE in msg.content.config_records else None
            node = msg.metadata.src_node_id
            site = self.roster.site_of_node.get(node) or str(claimed or f"node {node}")
            log(WARNING, "rejected the update of %s: %s", site, reason)
            self.record.setdefault("rejected", []).append({"site": site, "reason": reason})

    def note_errors(self, errors: list[Message]) -> None:
        for msg in errors:
            site = self.roster.name(self._node_of(msg))
            log(WARNING, "%s answered with an error: %s", site, msg.error.reason)
            self.record.setdefault("errors", []).append({"site": site, "reason": msg.error.reason})

    def note_missing(self, valid: list[Message], errors: list[Message], rejected: list[Message]) -> None:
        """Name the sites asked this round that did not answer in time or answered with an error (e.g. a dead
        site, which the SuperLink answers for once it misses its heartbeats); rejected replies are listed apart."""
        failed = {self._node_of(m) for m in errors}
        counted = {m.metadata.src_node_id for m in valid + rejected}
        missing = [{"site": self.roster.name(node),
                    "reason": "error reply" if node in failed else "no reply within round-timeout"}
                   for node in {m.metadata.dst_node_id for m in self.sent} - counted]
        self.record["missing"] = sorted(missing, key=lambda entry: entry["site"])

    def _node_of(self, reply: Message) -> int:
        """The node a reply answers for: its sender, or for an error the SuperLink wrote in a node's stead (a
        dead node), the destination of the message it replies to."""
        if reply.metadata.src_node_id != SUPERLINK_NODE_ID:
            return reply.metadata.src_node_id
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        return sent_to.get(reply.metadata.reply_to_message_id, SUPERLINK_NODE_ID)
