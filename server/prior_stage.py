"""Stage 1 of the federated `full` scheme: the shape auto-encoder of the anatomical prior, trained with FedAvg
on the sites' own masks in the union label space (see `server.site_query`)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from pedseg_core.config import FederationConfig, PedsegConfig
from pedseg_core.errors import PedsegError
from pedseg_core.model.shape_prior import ShapeAutoEncoder
from pedseg_core.protocol import STAGE, STAGE_PRIOR, UNION_CLASSES, UNION_OFFSETS_JSON
from pedseg_core.train.run_dir import RunDir
from server.quorum import wait_for_quorum


class PriorFedAvg(FedAvg):
    """Flower's FedAvg, whose rounds wait a bounded time for the quorum (`server.quorum`) before it samples."""

    def __init__(self, fed: FederationConfig) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=fed.min_nodes, min_available_nodes=fed.min_nodes)
        self.quorum_timeout = fed.quorum_timeout

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        wait_for_quorum(grid, self.min_available_nodes, self.quorum_timeout, f"stage 1, round {server_round}")
        return super().configure_train(server_round, arrays, config, grid)


def train_prior(grid: Grid, cfg: PedsegConfig, run: RunDir, offsets: dict[str, int], num_classes: int
                ) -> ArrayRecord:
    """FedAvg of the shape auto-encoder over prior.epochs rounds (stock Flower FedAvg: every site sends the
    same keys); one `stage: prior` line per round in metrics.jsonl (the sites' example-weighted reconstruction
    losses). Returns the final auto-encoder weights."""
    fed = cfg.federation
    strategy = PriorFedAvg(fed)
    initial = ArrayRecord(ShapeAutoEncoder(num_classes, cfg.prior.channels).state_dict())
    config = ConfigRecord({STAGE: STAGE_PRIOR, UNION_OFFSETS_JSON: json.dumps(offsets), UNION_CLASSES: num_classes})
    result = strategy.start(grid, initial, num_rounds=cfg.prior.epochs, timeout=fed.round_timeout,
                            train_config=config)
    for server_round, metrics in sorted(result.train_metrics_clientapp.items()):
        run.log({"stage": "prior", "round": server_round, **dict(metrics.items())})
    if not result.train_metrics_clientapp:
        raise PedsegError("stage 1: no site trained the shape prior (each site's error is in the ServerApp log)")
    return result.arrays
