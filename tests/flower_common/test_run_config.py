"""The configuration crosses into Flower as one document, read back through Flower's own --run-config parser; a
run config written by hand is resolved from the preset, the keys it sets and its overrides."""

from pathlib import Path

import pytest
import tomllib
from flwr.common.config import parse_config_args

from flower_common.run_config import RUN_CONFIG_FIELDS, config_from_run_config, run_config_with_document
from pedseg_core.config import DEFAULT_PRESET, build_config
from pedseg_core.errors import PedsegError
from simulations.local import run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_a_value_with_a_space_crosses_into_flower_whole():
    cfg = build_config("tiny", overrides={"scheme": "full", "federation": {"min_nodes": 3},
                                          "tracking": {"mlflow_experiment": "knee bones 2026"}})
    crossed = parse_config_args([run_config(run_config_with_document(cfg, {"out-dir": "/runs/a"}))])
    assert set(crossed) == {"out-dir", "config-json"}
    assert config_from_run_config(crossed) == cfg


def test_the_document_wins_over_pyprojects_keys():
    document = run_config_with_document(build_config("tiny", overrides={"federation": {"strategy": "fedprox"}}), {})
    run = {**document, "strategy": "fedavg", "preset": "small", "rounds": 0}
    cfg = config_from_run_config(run)
    assert cfg.federation.strategy == "fedprox" and cfg.preset == "tiny"


def test_a_hand_written_run_config_may_quote_a_value():
    cfg = config_from_run_config({"preset": "tiny", "overrides": "tracking.mlflow_experiment='a b' train.epochs=2"})
    assert cfg.tracking.mlflow_experiment == "a b" and cfg.train.epochs == 2


def test_every_section_of_the_document_is_validated():
    good = run_config_with_document(build_config("tiny"), {})["config-json"]
    with pytest.raises(PedsegError, match="federation.strategy must be one of fedavg, fedprox, got .fedsgd."):
        config_from_run_config({"config-json": good.replace('"strategy":"fedavg"', '"strategy":"fedsgd"')})
    with pytest.raises(PedsegError, match="not JSON"):
        config_from_run_config({"config-json": "{broken"})


def test_pyproject_repeats_no_default_the_presets_own():
    """Flower fills every run-config key in from pyproject: each is unset there, so a run config as Flower
    hands it over by hand resolves to the default preset exactly."""
    table = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert set(RUN_CONFIG_FIELDS) <= set(table) and all(value == "" for value in table.values())
    assert config_from_run_config(table) == build_config(DEFAULT_PRESET)
    assert config_from_run_config({**table, "evaluate-every": 2, "min-sites": 3}).federation.min_nodes == 3
