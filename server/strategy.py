"""Flower strategies that aggregate only the shared weights and log each round into the run directory.

Flower's stock FedAvg refuses replies whose array keys differ (sites of different joints have different
heads). Here, every reply must carry exactly the keys of the global shared weights the server sent (see
`server.update_checks`: a reply with any other key is rejected, so a private tensor can never enter the global
model), and each key is aggregated over the replies that passed: weighted by `num-examples`, or robustly
(`server.aggregation`). The message flow is that of `pedseg_core.protocol`.

Evaluation rides on the training message: in round r the server asks the sites (`evaluate-first`) to evaluate
their personalized model on the global weights they just received (the result of round r-1) before training,
which saves a whole message exchange per round. Only after the last round is there a separate evaluation.

Under `federation.message_dtype: fp16` the arrays travel down rounded to fp16 and come back as fp16 updates,
which the server turns back into weights before it checks them (`pedseg_core.message_dtype`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from pedseg_core.config import FederationConfig
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.message_dtype import FP16_UPDATE, decode_update, rounded, widened
from pedseg_core.protocol import (
    ARRAYS,
    ARRAYS_ENCODING,
    CONFIG,
    EVALUATE_FIRST,
    FEDERATION_RUN,
    HEAD,
    JOINT,
    MESSAGE_DTYPE,
    METRICS,
    NUM_EXAMPLES,
    NUM_ROUNDS,
    PRIOR,
    PROTOTYPE_SEP,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    REFUSALS_JSON,
    RESULT_JSON,
    SHARE_HEAD,
    SITE,
    SITE_NAME,
    TRAIN_LOSS,
    UNION_CLASSES,
    UNION_OFFSETS_JSON,
)
from pedseg_core.train.run_dir import RunDir
from server.aggregation import aggregate, weighted_mean
from server.quorum import BoundedQuorum
from server.update_checks import UpdateChecks, check_evaluation


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


class SharedWeightsAggregation:
    """Mixin for a Flower FedAvg-family strategy: shared-key aggregation, per-joint prototypes and heads,
    per-site logging into the run directory."""

    def setup_run(self, run: RunDir, fed: FederationConfig, num_rounds: int) -> None:
        self.run = run
        self.evaluate_every = fed.evaluate_every
        self.aggregation, self.trim_fraction = fed.aggregation, fed.trim_fraction
        self.checks = UpdateChecks(fed.norm_bound)
        self.num_rounds = num_rounds
        self.global_arrays = ArrayRecord()
        self.record: dict = {}
        self.awaiting_evaluation: dict | None = None  # the last round's record, until its evaluation arrives
        self.last_evaluation: dict[str, dict] = {}
        self.site_of_node: dict[int, str] = {}
        self.prototypes: dict[str, np.ndarray] = {}  # "<joint>|<scale>" -> mean projected embedding
        self.joint_of_node: dict[int, str] = {}
        self.joint_heads: dict[str, dict[str, np.ndarray]] = {}  # joint -> head pooled over its sites
        self.prior: ArrayRecord | None = None  # the frozen shape auto-encoder of the `full` scheme
        self.union_config: dict = {}
        self.sent: list[Message] = []  # this round's messages (Flower sets their ids when it sends them)
        self.round_start = time.perf_counter()
        self.federation_run = ""  # names the sites' private stores: the first Flower run id of this run
        self.secure = None  # a SecureAggregationGrid: the replies' ARRAYS are all the SecAgg+ mean
        self.message_dtype = "fp32" if fed.secure_aggregation else fed.message_dtype  # SecAgg+ carries its own
        self.on_wire: dict[str, ArrayRecord] = {}  # fp16: this round's arrays and prior as they travel down
        self.reference: dict[str, np.ndarray] = {}  # fp16: what the sites train from (the rounded global, fp32)

    def state_dict(self) -> dict:
        """What a resumed run needs of this strategy (torch-saveable: tensors, strings, numbers)."""
        return {"prototypes": {k: torch.from_numpy(v) for k, v in self.prototypes.items()},
                "joint_heads": {j: {k: torch.from_numpy(v) for k, v in h.items()} for j, h in self.joint_heads.items()},
                "awaiting_evaluation": json.dumps(self.awaiting_evaluation),
                "last_evaluation": json.dumps(self.last_evaluation),
                "declared_examples": json.dumps(self.checks.declared)}

    def load_state_dict(self, state: dict) -> None:
        self.prototypes = {k: v.numpy() for k, v in state["prototypes"].items()}
        self.joint_heads = {j: {k: v.numpy() for k, v in h.items()} for j, h in state["joint_heads"].items()}
        self.awaiting_evaluation = json.loads(state["awaiting_evaluation"])
        self.last_evaluation = json.loads(state["last_evaluation"])
        self.checks.declared = json.loads(state["declared_examples"])

    def know_sites(self, sites: dict[int, tuple[str, str]]) -> None:
        """The connected nodes' (site, joint), from the label query, before any round's reply names them."""
        for node, (site, joint) in sites.items():
            self.site_of_node[node] = site
            self.joint_of_node[node] = joint

    def use_union_labels(self, offsets: dict[str, int], num_classes: int) -> None:
        """Tell every site the union label space (the `shared` scheme's head, the prior's masks)."""
        self.union_config = {UNION_OFFSETS_JSON: json.dumps(offsets), UNION_CLASSES: num_classes}

    def use_prior(self, autoencoder: ArrayRecord) -> None:
        """Send the frozen prior with every training message (stage 2 of the `full` scheme)."""
        self.prior = autoencoder

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        self.round_start = time.perf_counter()
        self.record = {"round": server_round, "sites": {}, "errors": [], "rejected": []}
        config[NUM_ROUNDS] = self.num_rounds
        config[FEDERATION_RUN] = self.federation_run
        config[EVALUATE_FIRST] = server_round > 1 and (server_round - 1) % self.evaluate_every == 0
        self._round_for_the_wire(arrays, config)
        self.sent = [self._for_node(m) for m in super().configure_train(server_round, arrays, config, grid)]
        return self.sent

    def _round_for_the_wire(self, arrays: ArrayRecord, config: ConfigRecord) -> None:
        """Under fp16 messages, the arrays (and the prior) as they travel down, and what the sites train from."""
        if self.message_dtype != "fp16":
            return
        config[MESSAGE_DTYPE] = "fp16"
        down = rounded(_numpy(arrays))
        self.reference = widened(down)
        self.on_wire = {ARRAYS: _record(down)}
        if self.prior is not None:
            self.on_wire[PRIOR] = _record(rounded(_numpy(self.prior)))

    def _for_node(self, msg: Message) -> Message:
        """A node's own copy of the round's message: the shared arrays and config, the joints' prototypes,
        and for a joint held by several sites their pooled head (domain-wise aggregation)."""
        node = msg.metadata.dst_node_id
        content = RecordDict(dict(msg.content.items()))
        config = ConfigRecord(dict(msg.content[CONFIG].items()))
        joint = self.joint_of_node.get(node)
        sites_of_joint = {self.site_of_node[n] for n, j in self.joint_of_node.items() if j == joint}
        config[SHARE_HEAD] = joint is not None and len(sites_of_joint) > 1  # a rejoined site may have a new node
        config.update(self.union_config)
        if self.prior is not None:
            content[PRIOR] = self.prior
        content.update(self.on_wire)
        content[CONFIG] = config
        if self.prototypes:
            content[PROTOTYPES] = ArrayRecord({k: Array(v) for k, v in self.prototypes.items()})
        if joint in self.joint_heads:
            content[HEAD] = ArrayRecord({k: Array(v) for k, v in self.joint_heads[joint].items()})
        return Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply (`server.update_checks`), then aggregate the shared weights, prototypes and heads
        of those that passed; the round's record names contributors, missing sites and rejected updates."""
        replies = [self._decoded(m) for m in replies]
        errors = [m for m in replies if m.has_error()]
        self._note_errors(errors)
        heads = {j: {k: Array(v) for k, v in h.items()} for j, h in self.joint_heads.items()}
        known = {node: (site, self.joint_of_node[node]) for node, site in self.site_of_node.items()}
        valid, rejected, norms = self.checks.screen([m for m in replies if not m.has_error()], self.global_arrays,
                                                    heads, self.prototypes, known)
        self._note_rejected(rejected)
        self.record["update_norms"] = norms
        if self.secure is not None:  # every reply holds the same mean: single updates are not seen
            self.record["update_norms"] = {}
            self.record["secure_aggregation"] = self.secure.report
        self._note_missing(valid, errors, [m for m, _ in rejected])
        if not valid:
            return None, None
        started = time.perf_counter()
        weights = [float(m.content[METRICS][NUM_EXAMPLES]) for m in valid]
        records = [m.content[ARRAYS] for m in valid]
        aggregated = ArrayRecord({k: Array(aggregate([r[k].numpy() for r in records], weights, self.aggregation,
                                                     self.trim_fraction))
                                  for k in self.global_arrays.keys()})
        for msg in valid:
            site = self._site(msg)
            self.record["sites"][site] = {"joint": msg.content[SITE][JOINT],
                                          **{k: v for k, v in msg.content[METRICS].items()}}
        self._note_evaluations(server_round - 1, valid)
        self._aggregate_prototypes(valid)
        self._aggregate_heads(valid, weights)
        total = float(sum(weights))
        with_loss = [(m, w) for m, w in zip(valid, weights) if TRAIN_LOSS in m.content[METRICS]]  # DP sites send none
        loss = (sum(w * float(m.content[METRICS][TRAIN_LOSS]) for m, w in with_loss) / sum(w for _, w in with_loss)
                if with_loss else float("nan"))
        self.record["train_loss"] = loss
        self.record["examples"] = total
        self.record["aggregated_keys"] = len(aggregated)
        self.record["aggregation"] = self.aggregation
        self.record["aggregation_s"] = round(time.perf_counter() - started, 4)
        return aggregated, MetricRecord({TRAIN_LOSS: loss, NUM_EXAMPLES: total})

    def _decoded(self, reply: Message) -> Message:
        """A reply whose shared arrays are an fp16 update, with them as weights (the rounded global + update)."""
        if reply.has_error() or SITE not in reply.content.config_records or \
                reply.content[SITE].get(ARRAYS_ENCODING) != FP16_UPDATE or ARRAYS not in reply.content.array_records:
            return reply
        try:
            sent = _numpy(reply.content[ARRAYS])
        except Exception:  # noqa: BLE001 - an undecodable array: the update checks reject the reply for it
            return reply
        reply.content[ARRAYS] = _record(decode_update(sent, self.reference))
        return reply

    def _aggregate_prototypes(self, replies: list[Message]) -> None:
        """Per joint and scale, the slice-weighted mean of the sites' prototypes (sites of one joint pool)."""
        sent = [(m.content[PROTOTYPES], float(m.content[METRICS][PROTOTYPE_SLICES]))
                for m in replies if PROTOTYPES in m.content]
        keys = {k for record, _ in sent for k in record.keys()}
        self.prototypes = {k: weighted_mean([r[k].numpy() for r, _ in sent if k in r],
                                             [w for r, w in sent if k in r]) for k in sorted(keys)}
        self.record["prototype_joints"] = sorted({k.split(PROTOTYPE_SEP)[0] for k in keys})

    def _aggregate_heads(self, replies: list[Message], weights: list[float]) -> None:
        """Per joint, the example-weighted mean of the heads its sites sent (only joints with several sites
        are asked to send them)."""
        by_joint: dict[str, list[tuple[ArrayRecord, float]]] = {}
        for msg, w in zip(replies, weights):
            if HEAD in msg.content:
                by_joint.setdefault(str(msg.content[SITE][JOINT]), []).append((msg.content[HEAD], w))
        for joint, sent in by_joint.items():
            self.joint_heads[joint] = {k: weighted_mean([r[k].numpy() for r, _ in sent], [w for _, w in sent])
                                       for k in sent[0][0].keys()}
        self.record["pooled_heads"] = sorted(by_joint)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if server_round != self.num_rounds:
            return []  # earlier rounds are evaluated at the start of the next round's training
        config.update(self.union_config)
        config[FEDERATION_RUN] = self.federation_run
        self._round_for_the_wire(arrays, config)
        self.sent = list(super().configure_evaluate(server_round, arrays, config, grid))
        for msg in self.sent:
            if ARRAYS in self.on_wire:
                msg.content[ARRAYS] = self.on_wire[ARRAYS]
        return self.sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._note_errors([m for m in replies if m.has_error()])
        mean = self._note_evaluations(server_round, [m for m in replies if not m.has_error()])
        return None if mean is None else MetricRecord({"mean-dice": mean})

    def _note_evaluations(self, evaluated_round: int, replies: list[Message]) -> float | None:
        """Collect the site results that replies carry into this round's record (as the evaluation of the
        global model of `evaluated_round`); returns their mean Dice. A malformed result is rejected."""
        results = {}
        for msg in replies:
            if SITE in msg.content.config_records and RESULT_JSON in msg.content[SITE]:
                result, problem = check_evaluation(msg)
                if problem:
                    self._note_rejected([(msg, problem)])
                else:
                    results[self._site(msg)] = result
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
        """The site of a checked reply (and the node it answers from, from now on)."""
        site = str(msg.content[SITE][SITE_NAME])
        self.site_of_node[msg.metadata.src_node_id] = site
        self.joint_of_node[msg.metadata.src_node_id] = str(msg.content[SITE][JOINT])
        if REFUSALS_JSON in msg.content[SITE]:  # what the site's policy refused of this run's requests
            try:
                refused = json.loads(str(msg.content[SITE][REFUSALS_JSON]))
            except ValueError:
                refused = [str(msg.content[SITE][REFUSALS_JSON])]
            self.record.setdefault("policy_refusals", {})[site] = refused
        return site

    def _note_rejected(self, rejected: list[tuple[Message, str]]) -> None:
        for msg, reason in rejected:
            claimed = msg.content[SITE].get(SITE_NAME) if SITE in msg.content.config_records else None
            site = self.site_of_node.get(msg.metadata.src_node_id) or str(claimed or f"node {msg.metadata.src_node_id}")
            log(WARNING, "rejected the update of %s: %s", site, reason)
            self.record.setdefault("rejected", []).append({"site": site, "reason": reason})

    def _note_missing(self, valid: list[Message], errors: list[Message], rejected: list[Message]) -> None:
        """Name the sites asked this round that did not answer in time or answered with an error (e.g. a dead
        site, which the SuperLink answers for once it misses its heartbeats); rejected replies are listed apart."""
        failed = {self._node_of(m) for m in errors}
        counted = {m.metadata.src_node_id for m in valid + rejected}
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
            site = self._name(self._node_of(msg))
            log(WARNING, "%s answered with an error: %s", site, msg.error.reason)
            self.record.setdefault("errors", []).append({"site": site, "reason": msg.error.reason})


class ContinuedRounds:
    """Mixin for a Flower strategy (first in the bases): Flower's loop numbers its rounds from 1, a resumed run
    continues after the `rounds_done` rounds it already has, so every round number is shifted by those."""

    rounds_done = 0

    def configure_train(self, server_round, arrays, config, grid):
        return super().configure_train(server_round + self.rounds_done, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round + self.rounds_done, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return super().configure_evaluate(server_round + self.rounds_done, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return super().aggregate_evaluate(server_round + self.rounds_done, replies)


class SharedFedAvg(ContinuedRounds, SharedWeightsAggregation, BoundedQuorum, FedAvg):
    """FedAvg over the shared weights only."""


class SharedFedProx(ContinuedRounds, SharedWeightsAggregation, BoundedQuorum, FedProx):
    """FedProx over the shared weights only (sites add the proximal term on shared parameters)."""
