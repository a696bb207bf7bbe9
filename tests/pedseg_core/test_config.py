"""The typed configuration and its one adapter from Flower's run config."""

import pytest
from pydantic import ValidationError

from flower_common.run_config import config_from_run_config
from pedseg_core.config import (
    DEFAULT_PRESET,
    PRESETS,
    PedsegConfig,
    build_config,
    config_from_dict,
    parse_overrides,
)
from pedseg_core.errors import PedsegError


def test_run_config_maps_onto_the_typed_config():
    cfg = config_from_run_config({"preset": "tiny", "rounds": 3, "strategy": "fedprox",
                                  "proximal-mu": 0.1, "min-sites": 4, "out-dir": "/x",
                                  "overrides": "train.steps_per_epoch=5 data.image_size=96 model.norm=group"})
    assert cfg.preset == "tiny" and cfg.federation.num_rounds(cfg.train) == 3
    assert cfg.federation.strategy == "fedprox" and cfg.federation.proximal_mu == 0.1
    assert cfg.federation.min_nodes == 4
    assert (cfg.train.steps_per_epoch, cfg.data.image_size, cfg.model.norm) == (5, 96, "group")


def test_explicit_overrides_win_over_the_run_configs_keys():
    """The run config's keys arrive with pyproject's defaults; `--set` (overrides) is what the user asked for."""
    cfg = config_from_run_config({"preset": "tiny", "quorum-timeout": 600.0, "min-sites": 2,
                                  "overrides": "federation.quorum_timeout=10 federation.min_nodes=3"})
    assert (cfg.federation.quorum_timeout, cfg.federation.min_nodes) == (10, 3)


def test_zero_rounds_means_the_presets_epochs():
    cfg = config_from_run_config({"preset": "tiny", "rounds": 0})
    assert cfg.federation.num_rounds(cfg.train) == cfg.train.epochs


def test_an_unset_run_config_key_keeps_the_presets_value_and_a_set_one_wins():
    assert config_from_run_config({"preset": "small", "evaluate-every": ""}).federation.evaluate_every == 8
    assert config_from_run_config({"preset": "small", "evaluate-every": 2}).federation.evaluate_every == 2
    assert config_from_run_config({"preset": ""}).preset == DEFAULT_PRESET


def test_a_command_option_lies_under_the_yaml_file_and_the_overrides(tmp_path):
    """`pedseg federate --rounds 5 --config F.yaml --set ...`: the file's values, then --set, win over the
    command's own flags (whose defaults must not hide the file's)."""
    path = tmp_path / "run.yaml"
    path.write_text("scheme: contrastive\nfederation: {rounds: 7}\n", encoding="utf-8")
    options = {"scheme": "full", "federation": {"rounds": 5, "strategy": "fedprox"}}
    cfg = build_config("tiny", path, parse_overrides(["federation.rounds=9"]), options)
    assert (cfg.scheme, cfg.federation.rounds, cfg.federation.strategy) == ("contrastive", 9, "fedprox")
    assert {"rounds", "strategy"} <= cfg.federation.model_fields_set  # what was set, for the launchers' decisions


def test_no_preset_repeats_a_default():
    """Every value a preset sets differs from the typed configuration's default: a default is written once."""
    defaults = PedsegConfig().to_dict()
    for name, preset in PRESETS.items():
        for section, values in preset.items():
            for key, value in values.items():
                assert PedsegConfig.model_validate({section: {key: value}}).to_dict()[section][key] != \
                    defaults[section][key], (name, section, key)


@pytest.mark.parametrize("values, message", [
    ({"strategy": "fedyogi"}, "federation.strategy"),
    ({"overrides": "data.image_size=100"}, "multiple of 32"),
    ({"overrides": "train.nope=1"}, "unknown option 'nope'"),
    ({"preset": "huge"}, "preset 'huge' is unknown"),
    ({"rounds": -1}, r"federation.rounds must be 0 \(the preset's train.epochs\) or more, got -1"),
    ({"overrides": "federation.evaluate_every=0"}, "federation.evaluate_every must be at least 1, got 0"),
    ({"min-sites": 0}, "federation.min_nodes must be at least 1, got 0"),
    ({"quorum-timeout": 0}, "federation.quorum_timeout must be more than 0 seconds"),
    ({"round-timeout": -5}, "federation.round_timeout must be more than 0 seconds"),
    ({"fraction-train": 1.5}, r"federation.fraction_train must be in \(0, 1\], got 1.5"),
    ({"proximal-mu": -0.1}, "federation.proximal_mu must be 0 or more"),
    ({"norm-bound": 0.5}, r"federation.norm_bound must be 0 \(no bound\) or at least 1, got 0.5"),
    ({"aggregation": "geomedian"}, "federation.aggregation must be one of mean, median, .*, bulyan, got 'geomedian'"),
    ({"overrides": "federation.trim_fraction=0.5"}, r"federation.trim_fraction must be in \[0, 0.5\)"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(PedsegError, match=message):
        config_from_run_config({"preset": "tiny", **values})


def test_presets_resolve():
    for preset in ("tiny", "demo", "small", "paper"):
        assert build_config(preset).preset == preset


def test_a_yaml_config_travels_to_the_federation_inside_the_one_document(tmp_path):
    from flower_common.run_config import run_config_with_document

    path = tmp_path / "run.yaml"
    path.write_text("train: {epochs: 3, precision: bf16}\nmodel: {decoder_channels: [32, 16, 16, 8, 8]}\n",
                    encoding="utf-8")
    cfg = config_from_run_config(run_config_with_document(build_config("tiny", path), {}))
    assert (cfg.train.epochs, cfg.train.precision, cfg.model.decoder_channels) == (3, "bf16", (32, 16, 16, 8, 8))


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=0", "train.learning_rate must be more than 0, got 0"),
    ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
    ("prior.channels=[8,0]", r"prior.channels must be a list of widths of at least 1, got \[8, 0\]"),
    ("contrastive.max_prototype_slices=8", "contrastive.max_prototype_slices must be at least "
                                           r"contrastive.min_prototype_slices \(32\), got 8"),
    ("contrastive.scales=[0,7]", r"contrastive.scales must be stages in 0..5"),
    ("data.lower_percentile=99.9", "data.lower_percentile must be below data.upper_percentile"),
    ("data.folds=3", None),
    ("eval.recalibration_slices=-1", "eval.recalibration_slices must be at least 1, got -1"),
    ("tracking.mlflow_experiment=' '", "tracking.mlflow_experiment must be the name of an MLflow experiment"),
    ("model.backbone=resnet50", "model.backbone must be one of resnet10, resnet18, resnet34, got 'resnet50'"),
])
def test_every_section_is_validated(override, message):
    if message is None:
        assert build_config("tiny", overrides=parse_overrides([override])).data.folds == 3
        return
    with pytest.raises(PedsegError, match=f"^override: {message}"):
        build_config("tiny", overrides=parse_overrides([override]))


def test_a_bad_value_names_the_layer_that_set_it(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("train: {epochs: 3, steps_per_epoch: none}\n", encoding="utf-8")
    with pytest.raises(PedsegError, match=f"^{path}: train.steps_per_epoch must be a valid integer, got 'none'$"):
        build_config("tiny", path)
    cfg = build_config("tiny", path, parse_overrides(["train.steps_per_epoch=7"]))  # the override wins
    assert (cfg.train.epochs, cfg.train.steps_per_epoch) == (3, 7)


def test_values_are_coerced_to_their_types_and_every_assignment_is_checked():
    cfg = build_config("tiny", overrides={"train": {"epochs": "4", "channels_last": "true"},
                                          "model": {"decoder_channels": ["8", 8, 8, 8, 8]}})
    assert (cfg.train.epochs, cfg.train.channels_last, cfg.model.decoder_channels) == (4, True, (8, 8, 8, 8, 8))
    with pytest.raises(ValidationError):
        cfg.federation.min_nodes = 0
    assert config_from_dict(cfg.to_dict()) == cfg  # what config.yaml and config-json hold reads back the same
