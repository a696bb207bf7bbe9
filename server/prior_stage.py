"""Stage 1 of the federated `full` scheme: the union label space from the sites' dataset.json labels, then
the shape auto-encoder of the anatomical prior trained with FedAvg on the sites' own masks."""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from pedseg_core.config import PedsegConfig
from pedseg_core.data.union_labels import union_label_space
from pedseg_core.errors import PedsegError
from pedseg_core.model.shape_prior import ShapeAutoEncoder
from pedseg_core.train.run_dir import RunDir
from server.quorum import BoundedQuorum, wait_for_quorum


def collect_union_labels(grid: Grid, min_nodes: int, quorum_timeout: float, timeout: float
                         ) -> tuple[dict[str, int], dict[str, int]]:
    """Once the quorum is connected, ask every connected site for its joint and labels (a query message; no
    data leaves) -> (union label space, offset of each joint's bones in it). Sites of one joint must declare
    the same labels."""
    node_ids = wait_for_quorum(grid, min_nodes, quorum_timeout, "the label query")
    replies = grid.send_and_receive([Message(RecordDict({"config": ConfigRecord({"ask": "labels"})}),
                                             message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids],
                                    timeout=timeout)
    labels_of: dict[str, dict[str, int]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        joint = str(reply.content["site"]["joint"])
        labels = json.loads(str(reply.content["site"]["labels-json"]))
        if labels_of.setdefault(joint, labels) != labels:
            raise PedsegError(f"sites of joint '{joint}' declare different labels: {labels_of[joint]} vs {labels}")
    if not labels_of:
        raise PedsegError("no site answered the label query")
    joints = sorted(labels_of)
    union, offsets = union_label_space([labels_of[j] for j in joints], joints)
    return union, dict(zip(joints, offsets))


class QuorumFedAvg(BoundedQuorum, FedAvg):
    """Flower's FedAvg, with a bounded wait for the quorum."""


def train_prior(grid: Grid, cfg: PedsegConfig, run: RunDir, offsets: dict[str, int], num_classes: int
                ) -> ArrayRecord:
    """FedAvg of the shape auto-encoder over prior.epochs rounds (stock Flower FedAvg: every site sends the
    same keys); one `stage: prior` line per round in metrics.jsonl (the sites' example-weighted reconstruction
    losses). Returns the final auto-encoder weights."""
    fed = cfg.federation
    strategy = QuorumFedAvg(fraction_evaluate=0.0, min_train_nodes=fed.min_nodes, min_available_nodes=fed.min_nodes,
                            quorum_timeout=fed.quorum_timeout)
    initial = ArrayRecord(ShapeAutoEncoder(num_classes, cfg.prior.channels).state_dict())
    config = ConfigRecord({"stage": "prior", "union-offsets-json": json.dumps(offsets), "union-classes": num_classes})
    result = strategy.start(grid, initial, num_rounds=cfg.prior.epochs, timeout=fed.round_timeout,
                            train_config=config)
    for server_round, metrics in sorted(result.train_metrics_clientapp.items()):
        run.log({"stage": "prior", "round": server_round, **dict(metrics.items())})
    return result.arrays
