"""The configuration crosses into Flower as one document, read back through Flower's own --run-config parser."""

import pytest
from flwr.common.config import parse_config_args

from flower_common.run_config import config_from_run_config, with_config_document
from pedseg_core.errors import PedsegError
from simulations.local import run_config


def test_a_value_with_a_space_crosses_into_flower_whole():
    app = {"preset": "tiny", "scheme": "full", "min-nodes": 3, "out-dir": "/runs/a",
           "overrides": ["tracking.mlflow_experiment=knee bones 2026", "train.steps_per_epoch=7"]}
    crossed = parse_config_args([run_config(with_config_document(app))])
    assert set(crossed) == {"out-dir", "config-json"}  # the configuration keys went into the document
    cfg = config_from_run_config(crossed)
    assert cfg.tracking.mlflow_experiment == "knee bones 2026" and cfg.train.steps_per_epoch == 7
    assert cfg.scheme == "full" and cfg.federation.min_nodes == 3 and cfg.preset == "tiny"


def test_the_document_wins_over_pyprojects_keys():
    document = with_config_document({"preset": "tiny", "strategy": "fedprox"})
    run = {**document, "strategy": "fedavg", "preset": "small", "num-server-rounds": 0}  # Flower adds the defaults
    cfg = config_from_run_config(run)
    assert cfg.federation.strategy == "fedprox" and cfg.preset == "tiny"


def test_a_hand_written_run_config_may_quote_a_value():
    cfg = config_from_run_config({"preset": "tiny", "overrides": "tracking.mlflow_experiment='a b' train.epochs=2"})
    assert cfg.tracking.mlflow_experiment == "a b" and cfg.train.epochs == 2


def test_every_section_of_the_document_is_validated():
    good = with_config_document({"preset": "tiny"})["config-json"]
    with pytest.raises(PedsegError, match="federation.strategy must be one of fedavg, fedprox, got .fedsgd."):
        config_from_run_config({"config-json": good.replace('"strategy":"fedavg"', '"strategy":"fedsgd"')})
    with pytest.raises(PedsegError, match="not JSON"):
        config_from_run_config({"config-json": "{broken"})
