"""pedseg's server strategy: a Flower `Strategy` that wraps the Flower strategy of the run's aggregation rule
(`server.aggregation.RULES`: FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan), as Flower's DP
strategies wrap another, so Flower's own `start()` loop runs it. The inner strategy samples the nodes, builds the
messages and aggregates the shared weights; around it, each concern has its own module (the message flow is
that of `pedseg_core.protocol`):

- `server.quorum`: each round waits a bounded time for the quorum before the inner strategy samples.
- `server.node_messages`: each node's own message; `server.site_roster`: which site and joint a node is;
  `server.wire`: how the arrays travel (packed, fp16) and how replies are decoded.
- `server.update_checks`: every reply must carry exactly the keys of the global shared weights the server sent
  (sites of different joints have different heads); a reply with any other key is rejected, so a private tensor
  can never enter the global model. Only the replies that pass reach the inner strategy, reduced to what Flower's
  strategies expect (one ArrayRecord of shared weights, one MetricRecord with `num-examples`); its result is cast
  back to the global weights' dtypes (BatchNorm's int64 step counters stay integers: Flower averages in float).
- `server.domain_pools`: per-joint prototypes and heads; `server.piggyback_evaluation`: the evaluation that
  rides on the next round's training; `server.round_log`: the round's metrics line.

FedProx's proximal term is an option of every rule: under `federation.strategy: fedprox` each training message
carries `proximal-mu`. A resumed run (`server.run_state`) continues its round numbers after the rounds it has.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from pedseg_core.config import FederationConfig
from pedseg_core.protocol import (
    ARRAYS,
    EVALUATE_FIRST,
    FEDERATION_RUN,
    METRICS,
    NUM_EXAMPLES,
    NUM_ROUNDS,
    PRIOR,
    PROXIMAL_MU,
    SHARE_HEAD,
    SITE,
    SITE_NAME,
    TRAIN_LOSS,
    UNION_CLASSES,
    UNION_OFFSETS_JSON,
)
from pedseg_core.train.run_dir import RunDir
from server.aggregation import aggregation_rule
from server.domain_pools import DomainPools
from server.node_messages import for_node
from server.piggyback_evaluation import PiggybackEvaluation
from server.quorum import wait_for_quorum
from server.round_log import RoundLog
from server.run_state import RunState
from server.secure_aggregation import SecureAggregationGrid
from server.site_roster import SiteRoster
from server.update_checks import UpdateChecks, in_dtype
from server.wire import Wire


class SharedWeightsStrategy(Strategy):
    """The federated run's strategy over the shared weights, built whole from the run's federation config, its
    run directory, the state it starts from (a new run's, or a resumed one's: round, strategy state, union
    labels, prior, Flower run id) and the sites the label query found (node id -> (site, joint)). `secure`: the
    SecAgg+ grid the run trains through, whose replies' ARRAYS are all the sites' mean. `expected_examples`: the
    most a reply's update weighs (`server.update_checks.training_examples`)."""

    def __init__(self, fed: FederationConfig, run: RunDir, state: RunState, num_rounds: int,
                 sites: dict[int, tuple[str, str]] | None = None, secure: SecureAggregationGrid | None = None,
                 expected_examples: float = math.inf) -> None:
        self.rule = aggregation_rule(fed)
        self.aggregation = fed.aggregation
        self.proximal = {PROXIMAL_MU: fed.proximal_mu} if fed.strategy == "fedprox" else {}
        self.min_nodes, self.quorum_timeout = fed.min_nodes, fed.quorum_timeout
        self.run, self.num_rounds, self.secure = run, num_rounds, secure
        self.rounds_done = state.completed_round  # Flower numbers this run's rounds from 1: they continue after
        self.federation_run = state.federation_run  # names the sites' private stores: the run's first Flower run id
        self.checks = UpdateChecks(fed.norm_bound, expected_examples)
        self.roster = SiteRoster()
        self.roster.know(sites or {})
        self.rounds = RoundLog(self.roster)
        self.pools = DomainPools()
        self.evaluation = PiggybackEvaluation(fed.evaluate_every, num_rounds)
        plain = not fed.secure_aggregation  # SecAgg+ carries the arrays its own way
        self.wire = Wire(fp16=plain and fed.message_dtype == "fp16", pack=plain and fed.pack_arrays)
        self.union_config = {} if state.union is None else {  # the `shared` scheme's head, the prior's masks
            UNION_OFFSETS_JSON: json.dumps(state.offsets), UNION_CLASSES: len(state.union)}
        self.prior = None if state.prior is None else ArrayRecord(state.prior)  # the `full` scheme's frozen prior
        self.global_arrays = ArrayRecord()
        if state.strategy:
            self.load_state_dict(state.strategy)

    def summary(self) -> None:
        log(INFO, "\t├──> pedseg: the shared weights, aggregated by %s (%s)%s", self.aggregation,
            type(self.rule).__name__, f", proximal-mu {self.proximal[PROXIMAL_MU]}" if self.proximal else "")
        self.rule.summary()

    def state_dict(self) -> dict:
        """What a resumed run needs of this strategy (torch-saveable: tensors, strings, numbers)."""
        return {**self.pools.state_dict(), **self.evaluation.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pools.load_state_dict(state)
        self.evaluation.load_state_dict(state)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.rounds_done
        self.global_arrays = arrays
        self.rounds.begin(server_round)
        config[NUM_ROUNDS] = self.num_rounds
        config[FEDERATION_RUN] = self.federation_run
        config[EVALUATE_FIRST] = self.evaluation.asks_first(server_round)
        config.update(self.proximal)
        self.wire.prepare(arrays, self.prior, config)
        wait_for_quorum(grid, self.min_nodes, self.quorum_timeout, f"round {server_round}")
        self.rounds.sent = [self._for_node(m) for m in self.rule.configure_train(server_round, arrays, config, grid)]
        return self.rounds.sent

    def _for_node(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        records, packed = self.wire.records((ARRAYS, PRIOR))
        records |= self.pools.records_for(self.roster.joint(node))
        return for_node(msg, {SHARE_HEAD: self.roster.shares_head(node), **self.union_config, **packed}, records)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply (`server.update_checks`), then aggregate the shared weights of those that passed
        (the inner strategy), their prototypes and heads; the round's record names contributors, missing sites
        and rejected updates."""
        server_round += self.rounds_done
        replies = [self.wire.decoded(m) for m in replies]
        errors = [m for m in replies if m.has_error()]
        self.rounds.note_errors(errors)
        valid, rejected, norms = self.checks.screen([m for m in replies if not m.has_error()], self.global_arrays,
                                                    self.pools.heads_as_arrays(), self.pools.prototypes,
                                                    self.roster.known())
        self.rounds.note_rejected(rejected)
        record = self.rounds.record
        record["update_norms"] = norms
        for site, norms in self.checks.clipped.items():  # {"update"/"head": [its norm, the norm it was clipped to]}
            log(WARNING, "clipped the update of %s to the norm bound: %s", site, norms)
            record.setdefault("clipped", {})[site] = norms
        if self.secure is not None:  # every reply holds the same mean: single updates are not seen
            record["update_norms"] = {}
            record["secure_aggregation"] = self.secure.report
        self.rounds.note_missing(valid, errors, [m for m, _ in rejected])
        if not valid:
            return None, None
        started = time.perf_counter()
        weights = [self.checks.weight(m) for m in valid]  # min(declared, expected) examples
        capped = {str(m.content[SITE][SITE_NAME]): w for m, w in zip(valid, weights)
                  if w < float(m.content[METRICS][NUM_EXAMPLES])}
        if capped:  # site -> the examples it counts for, fewer than it declared
            record["capped_examples"] = capped
        aggregated = (valid[0].content[ARRAYS] if self.secure is not None
                      else self._aggregate(server_round, valid, weights))
        loss = self.rounds.note_training(valid, weights)
        self.evaluation.collect(server_round - 1, valid, self.rounds)
        record |= self.pools.pool(valid, weights)
        record |= {"aggregated_keys": len(aggregated or {}), "aggregation": self.aggregation,
                   "aggregation_s": round(time.perf_counter() - started, 4)}
        if aggregated is None:
            record["aggregation_skipped"] = (f"{self.aggregation}: {len(valid)} checked updates are too few for "
                                             f"federation.malicious_sites; the global weights stay as they were")
        return aggregated, MetricRecord({TRAIN_LOSS: loss, NUM_EXAMPLES: record["examples"]})

    def _aggregate(self, server_round: int, valid: list[Message], weights: list[float]) -> ArrayRecord | None:
        """The inner strategy's aggregate of the checked replies' shared weights, in the global dtypes; None when
        the rule declines (Bulyan with too few replies). The inner strategy sees each reply as Flower's own
        strategies expect it: one ArrayRecord, one MetricRecord holding only `num-examples`, its weight (so that
        every reply has the same metric keys, whatever else a site sends: a DP site sends no losses)."""
        reduced = [Message(content=RecordDict({ARRAYS: ArrayRecord(dict(m.content[ARRAYS].items())),
                                               METRICS: MetricRecord({NUM_EXAMPLES: w})}),
                           metadata=m.metadata) for m, w in zip(valid, weights)]
        arrays, _ = self.rule.aggregate_train(server_round, reduced)
        if arrays is None:
            return None
        return ArrayRecord({key: Array(in_dtype(arrays[key].numpy(), global_array.dtype))
                            for key, global_array in self.global_arrays.items()})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.rounds_done
        if server_round != self.num_rounds:
            return []  # earlier rounds are evaluated at the start of the next round's training
        config.update(self.union_config)
        config[FEDERATION_RUN] = self.federation_run
        self.wire.prepare(arrays, self.prior, config)
        records, packed = self.wire.records((ARRAYS,))
        wait_for_quorum(grid, self.min_nodes, self.quorum_timeout, f"the evaluation of round {server_round}")
        self.rounds.sent = [for_node(m, packed, records)
                            for m in self.rule.configure_evaluate(server_round, arrays, config, grid)]
        return self.rounds.sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.rounds_done
        replies = list(replies)
        self.rounds.note_errors([m for m in replies if m.has_error()])
        mean = self.evaluation.collect(server_round, [m for m in replies if not m.has_error()], self.rounds)
        return None if mean is None else MetricRecord({"mean-dice": mean})

    def end_round(self, completed_round: int) -> None:
        """Called after each round (from `evaluate_fn`), with the run's round number (a resumed run's count).
        Writes one metrics.jsonl line per round, in order; a round whose evaluation comes with the next round's
        training waits for it."""
        if completed_round == 0:
            return
        for line in self.evaluation.release(self.rounds.finish(), completed_round):
            self.run.log(line)
