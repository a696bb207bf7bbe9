"""The table of aggregation rules: every name the configuration accepts is a Flower strategy, built with the
run's sampling and the rule's own parameters (what each rule computes is tested through the server strategy, in
tests/server/test_strategy.py)."""

import pytest
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from pedseg_core.config import AGGREGATIONS, FederationConfig
from server.aggregation import RULES, aggregation_rule


def test_the_table_holds_exactly_the_rules_the_configuration_accepts():
    assert set(RULES) == set(AGGREGATIONS)


@pytest.mark.parametrize("name, kind", [("mean", FedAvg), ("median", FedMedian), ("trimmed-mean", FedTrimmedAvg),
                                        ("krum", Krum), ("multikrum", MultiKrum), ("bulyan", Bulyan)])
def test_each_rule_is_flowers_strategy_with_the_runs_sampling(name, kind):
    rule = aggregation_rule(FederationConfig(aggregation=name, min_nodes=7, fraction_train=0.5))
    assert type(rule) is kind
    assert (rule.fraction_train, rule.min_train_nodes, rule.min_available_nodes) == (0.5, 7, 7)


def test_the_rules_take_their_parameters_from_the_federation_config():
    assert aggregation_rule(FederationConfig(aggregation="trimmed-mean", trim_fraction=0.3)).beta == 0.3
    krum = aggregation_rule(FederationConfig(aggregation="krum", malicious_sites=1, min_nodes=5))
    assert (krum.num_malicious_nodes, krum.num_nodes_to_select) == (1, 1)
    multikrum = aggregation_rule(FederationConfig(aggregation="multikrum", malicious_sites=1, multikrum_selected=3,
                                                  min_nodes=5))
    assert (multikrum.num_malicious_nodes, multikrum.num_nodes_to_select) == (1, 3)
    assert aggregation_rule(FederationConfig(aggregation="bulyan", malicious_sites=1, min_nodes=7)
                            ).num_malicious_nodes == 1


@pytest.mark.parametrize("rule, factor", [("krum", 2), ("multikrum", 2), ("bulyan", 4)])
def test_a_robust_rule_is_refused_when_the_quorum_cannot_out_number_the_malicious_sites(rule, factor):
    needed = factor * 2 + 3
    FederationConfig(aggregation=rule, malicious_sites=2, min_nodes=needed)
    with pytest.raises(ValueError, match=rf"{rule} needs federation.min_nodes of at least {factor} x malicious_sites "
                                         rf"\+ 3 = {needed}, got {needed - 1}"):
        FederationConfig(aggregation=rule, malicious_sites=2, min_nodes=needed - 1)
