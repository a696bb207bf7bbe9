"""The aggregation rules: `federation.aggregation` -> the Flower strategy that turns a round's checked shared
weights into the new global ones (`server.strategy.SharedWeightsStrategy` holds it as its inner strategy, samples
the nodes through it and hands it only the replies that passed the update checks).

A new rule is ONE line of RULES (any Flower strategy that aggregates an ArrayRecord weighted by `num-examples`),
plus its name in `pedseg_core.config.AGGREGATIONS`, which validates the run's configuration (and a field in
`FederationConfig` if the rule takes a new parameter). FedProx is no rule here: its proximal term is an option
of every rule (`federation.strategy: fedprox` sends `proximal-mu` to the sites).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from pedseg_core.config import FederationConfig

RULES: dict[str, Callable[..., FedAvg]] = {  # name -> (the run's federation config, sampling) -> the strategy
    "mean": lambda fed, **sampling: FedAvg(**sampling),  # weighted by num-examples
    "median": lambda fed, **sampling: FedMedian(**sampling),  # coordinate-wise, every site counts once
    "trimmed-mean": lambda fed, **sampling: FedTrimmedAvg(**sampling, beta=fed.trim_fraction),
    "krum": lambda fed, **sampling: Krum(**sampling, num_malicious_nodes=fed.malicious_sites),
    "multikrum": lambda fed, **sampling: MultiKrum(**sampling, num_malicious_nodes=fed.malicious_sites,
                                                   num_nodes_to_select=fed.multikrum_selected),
    "bulyan": lambda fed, **sampling: Bulyan(**sampling, num_malicious_nodes=fed.malicious_sites),
}


def aggregation_rule(fed: FederationConfig) -> FedAvg:
    """The Flower strategy of `fed.aggregation`, sampling `fed.fraction_train` of the connected sites (at least
    `fed.min_nodes`) for training and every connected site for the final evaluation."""
    return RULES[fed.aggregation](fed, fraction_train=fed.fraction_train, min_train_nodes=fed.min_nodes,
                                  min_evaluate_nodes=fed.min_nodes, min_available_nodes=fed.min_nodes)
