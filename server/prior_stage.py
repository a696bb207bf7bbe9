"""Stage 1 of the federated `full` scheme: the shape auto-encoder of the anatomical prior, trained with FedAvg
on the sites' own masks in the union label space (see `server.site_query`). Its replies go through the update
checks of the rounds (`server.update_checks`: keys, shapes, finite values, metric types, the norm bound) and
weigh min(declared, expected) examples, as the segmentation rounds' do."""

from __future__ import annotations

import json
from collections.abc import Iterable
from logging import WARNING

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from pedseg_core.config import FederationConfig, PedsegConfig
from pedseg_core.errors import PedsegError
from pedseg_core.model.shape_prior import ShapeAutoEncoder
from pedseg_core.protocol import ARRAYS, METRICS, NUM_EXAMPLES, STAGE, STAGE_PRIOR, UNION_CLASSES, UNION_OFFSETS_JSON
from pedseg_core.train.run_dir import RunDir
from server.quorum import wait_for_quorum
from server.update_checks import UpdateChecks, in_dtype, prior_examples


def weighted_metrics(replies: list[Message], weights: list[float]) -> dict[str, float]:
    """Each metric's weighted mean over the replies that carry it (a DP site sends no losses), and the total
    weight as `num-examples`."""
    keys = sorted({k for m in replies for k in m.content[METRICS].keys()} - {NUM_EXAMPLES})
    means = {}
    for key in keys:
        sent = [(float(m.content[METRICS][key]), w) for m, w in zip(replies, weights) if key in m.content[METRICS]]
        means[key] = sum(v * w for v, w in sent) / sum(w for _, w in sent)
    return {NUM_EXAMPLES: float(sum(weights)), **means}


class PriorFedAvg(FedAvg):
    """Flower's FedAvg over checked replies: its rounds wait a bounded time for the quorum (`server.quorum`)
    before it samples; each round's replies are screened by `checks` and reach FedAvg reduced to their arrays
    and their weight. `notes`: per round, what the checks rejected or clipped."""

    def __init__(self, fed: FederationConfig, checks: UpdateChecks) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=fed.min_nodes, min_available_nodes=fed.min_nodes)
        self.quorum_timeout = fed.quorum_timeout
        self.checks = checks
        self.global_arrays = ArrayRecord()
        self.notes: dict[int, dict] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        wait_for_quorum(grid, self.min_available_nodes, self.quorum_timeout, f"stage 1, round {server_round}")
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        errors = [{"site": f"node {m.metadata.src_node_id}", "reason": m.error.reason} for m in replies
                  if m.has_error()]
        valid, rejected, norms = self.checks.screen([m for m in replies if not m.has_error()], self.global_arrays,
                                                    {}, {})
        notes = {"update_norms": norms, "rejected": [], "errors": errors}
        for msg, reason in rejected:
            log(WARNING, "stage 1: rejected the update of node %s: %s", msg.metadata.src_node_id, reason)
            notes["rejected"].append({"site": f"node {msg.metadata.src_node_id}", "reason": reason})
        for node, norms in self.checks.clipped.items():
            log(WARNING, "stage 1: clipped the update of %s to the norm bound: %s", node, norms)
            notes.setdefault("clipped", {})[node] = norms
        self.notes[server_round] = notes
        if not valid:
            return None, None
        weights = [self.checks.weight(m) for m in valid]
        reduced = [Message(content=RecordDict({ARRAYS: ArrayRecord(dict(m.content[ARRAYS].items())),
                                               METRICS: MetricRecord({NUM_EXAMPLES: w})}), metadata=m.metadata)
                   for m, w in zip(valid, weights)]
        arrays, _ = super().aggregate_train(server_round, reduced)
        if arrays is None:
            return None, None
        arrays = ArrayRecord({key: Array(in_dtype(arrays[key].numpy(), array.dtype))
                              for key, array in self.global_arrays.items()})
        return arrays, MetricRecord(weighted_metrics(valid, weights))


def train_prior(grid: Grid, cfg: PedsegConfig, run: RunDir, offsets: dict[str, int], num_classes: int
                ) -> ArrayRecord:
    """FedAvg of the shape auto-encoder over prior.epochs rounds, of the checked replies; one `stage: prior` line
    per round in metrics.jsonl (the sites' example-weighted metrics, what was rejected or clipped). Returns the
    final auto-encoder weights."""
    fed = cfg.federation
    checks = UpdateChecks(fed.norm_bound, prior_examples(cfg), identified=False)
    strategy = PriorFedAvg(fed, checks)
    initial = ArrayRecord(ShapeAutoEncoder(num_classes, cfg.prior.channels).state_dict())
    config = ConfigRecord({STAGE: STAGE_PRIOR, UNION_OFFSETS_JSON: json.dumps(offsets), UNION_CLASSES: num_classes})
    result = strategy.start(grid, initial, num_rounds=cfg.prior.epochs, timeout=fed.round_timeout,
                            train_config=config)
    for server_round, notes in sorted(strategy.notes.items()):
        metrics = result.train_metrics_clientapp.get(server_round)
        run.log({"stage": "prior", "round": server_round, **dict(metrics.items() if metrics else {}), **notes})
    if not result.train_metrics_clientapp:
        raise PedsegError("stage 1: no site trained the shape prior (each site's error and each rejected update "
                          "is in the ServerApp log)")
    return result.arrays
