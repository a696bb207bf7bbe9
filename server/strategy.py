"""Flower strategies that aggregate only the shared weights, pool what the sites of a joint share, and log each
round into the run directory. Each concern has its own module; this one puts them together in Flower's
strategy methods (the message flow is that of `pedseg_core.protocol`):

- `server.node_messages`: each node's own message; `server.site_roster`: which site and joint a node is.
- `server.update_checks`: every reply must carry exactly the keys of the global shared weights the server sent
  (Flower's stock FedAvg refuses replies whose keys differ, and sites of different joints have different heads);
  a reply with any other key is rejected, so a private tensor can never enter the global model.
- `server.aggregation`: each shared key over the replies that passed, weighted by `num-examples` or robustly.
- `server.domain_pools`: per-joint prototypes and heads; `server.piggyback_evaluation`: the evaluation that
  rides on the next round's training; `server.round_log`: the round's metrics line; `server.wire`: how the
  arrays travel (packed, fp16).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from pedseg_core.config import FederationConfig
from pedseg_core.protocol import (
    ARRAYS,
    EVALUATE_FIRST,
    FEDERATION_RUN,
    METRICS,
    NUM_EXAMPLES,
    NUM_ROUNDS,
    PRIOR,
    SHARE_HEAD,
    TRAIN_LOSS,
    UNION_CLASSES,
    UNION_OFFSETS_JSON,
)
from pedseg_core.train.run_dir import RunDir
from server.aggregation import aggregate
from server.continued_rounds import ContinuedRounds
from server.domain_pools import DomainPools
from server.node_messages import for_node
from server.piggyback_evaluation import PiggybackEvaluation
from server.quorum import BoundedQuorum
from server.round_log import RoundLog
from server.site_roster import SiteRoster
from server.update_checks import UpdateChecks
from server.wire import Wire


class SharedWeightsAggregation:
    """Mixin for a Flower FedAvg-family strategy: shared-key aggregation, per-joint prototypes and heads,
    per-site logging into the run directory."""

    def setup_run(self, run: RunDir, fed: FederationConfig, num_rounds: int) -> None:
        self.run = run
        self.aggregation, self.trim_fraction = fed.aggregation, fed.trim_fraction
        self.checks = UpdateChecks(fed.norm_bound)
        self.roster = SiteRoster()
        self.rounds = RoundLog(self.roster)
        self.pools = DomainPools()
        self.evaluation = PiggybackEvaluation(fed.evaluate_every, num_rounds)
        plain = not fed.secure_aggregation  # SecAgg+ carries the arrays its own way
        self.wire = Wire(fp16=plain and fed.message_dtype == "fp16", pack=plain and fed.pack_arrays)
        self.num_rounds = num_rounds
        self.global_arrays = ArrayRecord()
        self.union_config: dict = {}
        self.prior: ArrayRecord | None = None  # the frozen shape auto-encoder of the `full` scheme
        self.federation_run = ""  # names the sites' private stores: the first Flower run id of this run
        self.secure = None  # a SecureAggregationGrid: the replies' ARRAYS are all the SecAgg+ mean

    def state_dict(self) -> dict:
        """What a resumed run needs of this strategy (torch-saveable: tensors, strings, numbers)."""
        return {**self.pools.state_dict(), **self.evaluation.state_dict(),
                "declared_examples": json.dumps(self.checks.declared)}

    def load_state_dict(self, state: dict) -> None:
        self.pools.load_state_dict(state)
        self.evaluation.load_state_dict(state)
        self.checks.declared = json.loads(state["declared_examples"])

    def know_sites(self, sites: dict[int, tuple[str, str]]) -> None:
        """The connected nodes' (site, joint), from the label query, before any round's reply names them."""
        self.roster.know(sites)

    def use_union_labels(self, offsets: dict[str, int], num_classes: int) -> None:
        """Tell every site the union label space (the `shared` scheme's head, the prior's masks)."""
        self.union_config = {UNION_OFFSETS_JSON: json.dumps(offsets), UNION_CLASSES: num_classes}

    def use_prior(self, autoencoder: ArrayRecord) -> None:
        """Send the frozen prior with every training message (stage 2 of the `full` scheme)."""
        self.prior = autoencoder

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        self.rounds.begin(server_round)
        config[NUM_ROUNDS] = self.num_rounds
        config[FEDERATION_RUN] = self.federation_run
        config[EVALUATE_FIRST] = self.evaluation.asks_first(server_round)
        self.wire.prepare(arrays, self.prior, config)
        self.rounds.sent = [self._for_node(m) for m in super().configure_train(server_round, arrays, config, grid)]
        return self.rounds.sent

    def _for_node(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        records, packed = self.wire.records((ARRAYS, PRIOR))
        records |= self.pools.records_for(self.roster.joint(node))
        return for_node(msg, {SHARE_HEAD: self.roster.shares_head(node), **self.union_config, **packed}, records)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply (`server.update_checks`), then aggregate the shared weights, prototypes and heads
        of those that passed; the round's record names contributors, missing sites and rejected updates."""
        replies = [self.wire.decoded(m) for m in replies]
        errors = [m for m in replies if m.has_error()]
        self.rounds.note_errors(errors)
        valid, rejected, norms = self.checks.screen([m for m in replies if not m.has_error()], self.global_arrays,
                                                    self.pools.heads_as_arrays(), self.pools.prototypes,
                                                    self.roster.known())
        self.rounds.note_rejected(rejected)
        record = self.rounds.record
        record["update_norms"] = norms
        if self.secure is not None:  # every reply holds the same mean: single updates are not seen
            record["update_norms"] = {}
            record["secure_aggregation"] = self.secure.report
        self.rounds.note_missing(valid, errors, [m for m, _ in rejected])
        if not valid:
            return None, None
        started = time.perf_counter()
        weights = [float(m.content[METRICS][NUM_EXAMPLES]) for m in valid]
        records = [m.content[ARRAYS] for m in valid]
        aggregated = ArrayRecord({k: Array(aggregate([r[k].numpy() for r in records], weights, self.aggregation,
                                                     self.trim_fraction))
                                  for k in self.global_arrays.keys()})
        loss = self.rounds.note_training(valid, weights)
        self.evaluation.collect(server_round - 1, valid, self.rounds)
        record |= self.pools.pool(valid, weights)
        record |= {"aggregated_keys": len(aggregated), "aggregation": self.aggregation,
                   "aggregation_s": round(time.perf_counter() - started, 4)}
        return aggregated, MetricRecord({TRAIN_LOSS: loss, NUM_EXAMPLES: record["examples"]})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if server_round != self.num_rounds:
            return []  # earlier rounds are evaluated at the start of the next round's training
        config.update(self.union_config)
        config[FEDERATION_RUN] = self.federation_run
        self.wire.prepare(arrays, self.prior, config)
        records, packed = self.wire.records((ARRAYS,))
        self.rounds.sent = [for_node(m, packed, records)
                            for m in super().configure_evaluate(server_round, arrays, config, grid)]
        return self.rounds.sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self.rounds.note_errors([m for m in replies if m.has_error()])
        mean = self.evaluation.collect(server_round, [m for m in replies if not m.has_error()], self.rounds)
        return None if mean is None else MetricRecord({"mean-dice": mean})

    def end_round(self, server_round: int) -> None:
        """Called after each round (from `evaluate_fn`). Writes one metrics.jsonl line per round, in order; a
        round whose evaluation comes with the next round's training waits for it."""
        if server_round == 0:
            return
        for line in self.evaluation.release(self.rounds.finish(), server_round):
            self.run.log(line)


class SharedFedAvg(ContinuedRounds, SharedWeightsAggregation, BoundedQuorum, FedAvg):
    """FedAvg over the shared weights only."""


class SharedFedProx(ContinuedRounds, SharedWeightsAggregation, BoundedQuorum, FedProx):
    """FedProx over the shared weights only (sites add the proximal term on shared parameters)."""
