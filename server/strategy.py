"""Flower strategies that aggregate only the shared weights and log each round into the run directory.

Flower's stock FedAvg refuses replies whose array keys differ (sites of different joints have different
heads). Here, every reply is cut down to the keys of the global shared weights the server sent, so a key
that is not shared can never enter the global model, and each key is averaged weighted by `num-examples`.

Evaluation rides on the training message: in round r the server asks the sites (`evaluate-first`) to evaluate
their personalized model on the global weights they just received (the result of round r-1) before training,
which saves a whole message exchange per round. Only after the last round is there a separate evaluation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.train.run_dir import RunDir
from server.quorum import BoundedQuorum


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Example-weighted mean of same-shaped arrays, in the dtype of the first (integers rounded)."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    mean = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays))
    dtype = arrays[0].dtype
    return np.asarray(np.rint(mean) if np.issubdtype(dtype, np.integer) else mean).astype(dtype)


class SharedWeightsAggregation:
    """Mixin for a Flower FedAvg-family strategy: shared-key aggregation, per-joint prototypes and heads,
    per-site logging into the run directory."""

    def setup_run(self, run: RunDir, evaluate_every: int, num_rounds: int) -> None:
        self.run = run
        self.evaluate_every = evaluate_every
        self.num_rounds = num_rounds
        self.global_keys: set[str] = set()
        self.record: dict = {}
        self.awaiting_evaluation: dict | None = None  # the last round's record, until its evaluation arrives
        self.last_evaluation: dict[str, dict] = {}
        self.site_of_node: dict[int, str] = {}
        self.prototypes: dict[str, np.ndarray] = {}  # "<joint>|<scale>" -> mean projected embedding
        self.joint_of_node: dict[int, str] = {}
        self.joint_heads: dict[str, dict[str, np.ndarray]] = {}  # joint -> head pooled over its sites
        self.prior: ArrayRecord | None = None  # the frozen shape auto-encoder of the `full` scheme
        self.union_config: dict = {}
        self.sent: list[Message] = []  # this round's training messages (Flower sets their ids when it sends them)
        self.round_start = time.perf_counter()

    def use_union_labels(self, offsets: dict[str, int], num_classes: int) -> None:
        """Tell every site the union label space (the `shared` scheme's head, the prior's masks)."""
        self.union_config = {"union-offsets-json": json.dumps(offsets), "union-classes": num_classes}

    def use_prior(self, autoencoder: ArrayRecord) -> None:
        """Send the frozen prior with every training message (stage 2 of the `full` scheme)."""
        self.prior = autoencoder

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_keys = set(arrays.keys())
        self.round_start = time.perf_counter()
        self.record = {"round": server_round, "sites": {}, "errors": []}
        config["num-rounds"] = self.num_rounds
        config["evaluate-first"] = server_round > 1 and (server_round - 1) % self.evaluate_every == 0
        self.sent = [self._for_node(m) for m in super().configure_train(server_round, arrays, config, grid)]
        return self.sent

    def _for_node(self, msg: Message) -> Message:
        """A node's own copy of the round's message: the shared arrays and config, the joints' prototypes,
        and for a joint held by several sites their pooled head (domain-wise aggregation)."""
        node = msg.metadata.dst_node_id
        content = RecordDict(dict(msg.content.items()))
        config = ConfigRecord(dict(msg.content["config"].items()))
        joint = self.joint_of_node.get(node)
        config["share-head"] = list(self.joint_of_node.values()).count(joint) > 1
        config.update(self.union_config)
        if self.prior is not None:
            content["prior"] = self.prior
        content["config"] = config
        if self.prototypes:
            content["prototypes"] = ArrayRecord({k: Array(v) for k, v in self.prototypes.items()})
        if joint in self.joint_heads:
            content["joint-arrays"] = ArrayRecord({k: Array(v) for k, v in self.joint_heads[joint].items()})
        return Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        self._note_errors(errors)
        valid = [m for m in valid if "arrays" in m.content and "metrics" in m.content]
        self._note_missing(valid, errors)
        if not valid:
            return None, None
        started = time.perf_counter()
        weights = [float(m.content["metrics"]["num-examples"]) for m in valid]
        records = [m.content["arrays"] for m in valid]
        foreign = {k for r in records for k in r.keys()} - self.global_keys
        if foreign:
            log(WARNING, "ignored %d array keys that are not shared weights, e.g. %s", len(foreign),
                sorted(foreign)[:3])
        keys = [k for k in records[0].keys() if k in self.global_keys and all(k in r for r in records)]
        aggregated = ArrayRecord({k: Array(weighted_mean([r[k].numpy() for r in records], weights))
                                  for k in keys})
        for msg in valid:
            site = self._site(msg)
            self.record["sites"][site] = {"joint": msg.content["site"]["joint"],
                                          **{k: v for k, v in msg.content["metrics"].items()}}
        self._note_evaluations(server_round - 1, valid)
        self._aggregate_prototypes(valid)
        self._aggregate_heads(valid, weights)
        total = float(sum(weights))
        loss = sum(w * float(m.content["metrics"]["train-loss"]) for m, w in zip(valid, weights)) / total
        self.record["train_loss"] = loss
        self.record["examples"] = total
        self.record["aggregated_keys"] = len(keys)
        self.record["aggregation_s"] = round(time.perf_counter() - started, 4)
        return aggregated, MetricRecord({"train-loss": loss, "num-examples": total})

    def _aggregate_prototypes(self, replies: list[Message]) -> None:
        """Per joint and scale, the slice-weighted mean of the sites' prototypes (sites of one joint pool)."""
        sent = [(m.content["prototypes"], float(m.content["metrics"]["prototype-slices"]))
                for m in replies if "prototypes" in m.content]
        keys = {k for record, _ in sent for k in record.keys()}
        self.prototypes = {k: weighted_mean([r[k].numpy() for r, _ in sent if k in r],
                                             [w for r, w in sent if k in r]) for k in sorted(keys)}
        self.record["prototype_joints"] = sorted({k.split("|")[0] for k in keys})

    def _aggregate_heads(self, replies: list[Message], weights: list[float]) -> None:
        """Per joint, the example-weighted mean of the heads its sites sent (only joints with several sites
        are asked to send them)."""
        by_joint: dict[str, list[tuple[ArrayRecord, float]]] = {}
        for msg, w in zip(replies, weights):
            if "joint-arrays" in msg.content:
                by_joint.setdefault(str(msg.content["site"]["joint"]), []).append((msg.content["joint-arrays"], w))
        for joint, sent in by_joint.items():
            self.joint_heads[joint] = {k: weighted_mean([r[k].numpy() for r, _ in sent], [w for _, w in sent])
                                       for k in sent[0][0].keys()}
        self.record["pooled_heads"] = sorted(by_joint)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if server_round != self.num_rounds:
            return []  # earlier rounds are evaluated at the start of the next round's training
        config.update(self.union_config)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, errors = self._check_and_log_replies(replies, is_train=False, validate=False)
        self._note_errors(errors)
        mean = self._note_evaluations(server_round, valid)
        return None if mean is None else MetricRecord({"mean-dice": mean})

    def _note_evaluations(self, evaluated_round: int, replies: list[Message]) -> float | None:
        """Collect the site results that replies carry into this round's record (as the evaluation of the
        global model of `evaluated_round`); returns their mean Dice."""
        results = {self._site(m): json.loads(m.content["site"]["result-json"])
                   for m in replies if "result-json" in m.content["site"]}
        if not results:
            return None
        self.last_evaluation = results
        mean = mean_or_none(r["mean_dice"] for r in results.values())
        record = self.record if evaluated_round == self.record.get("round") else self.awaiting_evaluation
        if record is None:
            return mean
        record["evaluation"] = {
            "mean_dice": mean,
            "sites": {site: {"dice": r["dice"], "hd95": r["hd95"], "assd": r["assd"], "mean_dice": r["mean_dice"]}
                      for site, r in results.items()}}
        return mean

    def end_round(self, server_round: int) -> None:
        """Called after each round (from `evaluate_fn`). Writes one metrics.jsonl line per round, in order; a
        round whose evaluation comes with the next round's training waits for it."""
        if server_round == 0:
            return
        self.record["round_time_s"] = round(time.perf_counter() - self.round_start, 3)
        if self.awaiting_evaluation is not None:
            self.run.log(self.awaiting_evaluation)
            self.awaiting_evaluation = None
        if server_round % self.evaluate_every == 0 and server_round < self.num_rounds:
            self.awaiting_evaluation = self.record
        else:
            self.run.log(self.record)

    def _site(self, msg: Message) -> str:
        site = str(msg.content["site"]["site"])
        self.site_of_node[msg.metadata.src_node_id] = site
        self.joint_of_node[msg.metadata.src_node_id] = str(msg.content["site"]["joint"])
        return site

    def _note_missing(self, valid: list[Message], errors: list[Message]) -> None:
        """Name the sites asked this round whose update does not count: an error reply (e.g. a dead site, which
        the SuperLink answers for once it misses its heartbeats) or no reply within the round timeout."""
        failed = {self._node_of(m) for m in errors}
        counted = {m.metadata.src_node_id for m in valid}
        missing = [{"site": self._name(node),
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

    def _name(self, node: int) -> str:
        return self.site_of_node.get(node, f"node {node}")

    def _note_errors(self, errors: list[Message]) -> None:
        for msg in errors:
            self.record.setdefault("errors", []).append({"site": self._name(self._node_of(msg)),
                                                         "reason": msg.error.reason})


class SharedFedAvg(SharedWeightsAggregation, BoundedQuorum, FedAvg):
    """FedAvg over the shared weights only."""


class SharedFedProx(SharedWeightsAggregation, BoundedQuorum, FedProx):
    """FedProx over the shared weights only (sites add the proximal term on shared parameters)."""
