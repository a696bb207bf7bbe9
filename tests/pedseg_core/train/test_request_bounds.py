"""The site's policy bounds every knob of a run's configuration that shapes what leaves the site: a hostile run
config is refused by policy item, in words that name nothing of the site's files; what a federation never sets
is the site's own."""

from __future__ import annotations

import pytest

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy
from pedseg_core.train.request_bounds import SiteOwnValues, bounded_config, violations
from pedseg_core.train.site_algorithm import SiteAlgorithm
from pedseg_core.train.site_requests import SiteSettings

HOSTILE = [  # (run config overrides, the policy item that refuses them, the option named)
    ({"scheme": "shared"}, "allowed_schemes", "scheme = 'shared'"),
    ({"train": {"batch_size": 1}}, "min_batch_size", "train.batch_size = 1"),
    ({"train": {"steps_per_epoch": 1}}, "min_local_steps", "train.steps_per_epoch = 1"),
    ({"train": {"learning_rate": 1.0}}, "max_learning_rate", "train.learning_rate = 1.0"),
    ({"scheme": "full", "prior": {"batch_size": 1}}, "min_batch_size", "prior.batch_size = 1"),
    ({"scheme": "full", "prior": {"steps_per_epoch": 1}}, "min_local_steps", "prior.steps_per_epoch = 1"),
    ({"scheme": "full", "prior": {"learning_rate": 1.0}}, "max_learning_rate", "prior.learning_rate = 1.0"),
    ({"data": {"image_size": 4096}}, "max_image_size", "data.image_size = 4096"),
    ({"model": {"decoder_channels": [4096, 64, 32, 16, 8]}}, "max_width", "model.decoder_channels = 4096"),
    ({"prior": {"channels": [8, 100000]}}, "max_width", "prior.channels = 100000"),
    ({"contrastive": {"hidden": 65536}}, "max_embedding_dim", "contrastive.hidden = 65536"),
    ({"contrastive": {"dim": 65536}}, "max_embedding_dim", "contrastive.dim = 65536"),
    ({"data": {"augment": False}}, "require_augmentation", "data.augment = False"),
    ({"data": {"augment_probability": 0}}, "require_augmentation", "data.augment_probability = 0.0"),
]


@pytest.mark.parametrize("preset", ["tiny", "demo", "small", "paper"])
@pytest.mark.parametrize("scheme", ["multi-domain", "contrastive", "full"])
def test_the_default_policy_admits_every_preset(preset, scheme):
    assert violations(build_config(preset, overrides={"scheme": scheme}), SitePolicy()) == []


@pytest.mark.parametrize("overrides, item, option", HOSTILE)
def test_a_hostile_run_config_is_refused_naming_the_policy_item_and_nothing_of_the_site(overrides, item, option,
                                                                                         tmp_path, capsys):
    cfg = build_config("tiny", overrides=overrides)
    data_dir = tmp_path / "hospital-data"  # never read: the run is refused first
    settings = SiteSettings("st-mary", "knee", data_dir, tmp_path / "state")
    with pytest.raises(PedsegError) as err:
        SiteAlgorithm(settings, cfg, run="1")
    message = str(err.value)
    assert message.startswith(f"refused by the site's policy: {item} (") and option in message
    assert str(tmp_path) not in message and "st-mary" not in message and "\n" not in message
    assert f"breaks the site's policy item {item}" in capsys.readouterr().err  # the site's log has the details
    assert not (tmp_path / "state").exists()


def test_a_policy_may_grant_what_the_default_refuses():
    granting = SitePolicy(allowed_schemes=("shared",), min_batch_size=1, min_local_steps=1, max_learning_rate=1.0,
                          require_augmentation=False)
    cfg = build_config("tiny", overrides={"scheme": "shared", "train": {"batch_size": 1, "steps_per_epoch": 1,
                                                                         "learning_rate": 1.0},
                                          "data": {"augment": False}})
    assert violations(cfg, granting) == []


def test_the_evaluation_split_encoder_weights_tracking_and_device_are_the_sites_own(capsys):
    cfg = build_config("paper", overrides={"data": {"folds": 5, "fold": 4, "validation_fraction": 0.9,
                                                    "augment_probability": 0.01, "rotate_degrees": 0},
                                           "train": {"device": "cuda:7"},
                                           "tracking": {"mlflow_uri": "http://operator.example:5000"}})
    own = SiteOwnValues(folds=3, fold=1, device="cpu")
    bounded = bounded_config(cfg, SitePolicy(), own, "st-mary")
    assert (bounded.data.folds, bounded.data.fold, bounded.data.validation_fraction) == (3, 1, 0.2)
    assert (bounded.data.augment_probability, bounded.data.rotate_degrees) == (0.5, 15.0)  # the site's strength
    assert (bounded.model.encoder_weights, bounded.train.device, bounded.tracking.mlflow_uri) == ("none", "cpu", "")
    assert (cfg.data.folds, cfg.model.encoder_weights) == (5, "imagenet")  # the run's own document is untouched
    assert bounded.data.image_size == cfg.data.image_size and bounded.train == cfg.train.model_copy(
        update={"device": "cpu"})
    assert "the site's own here" in capsys.readouterr().err


def test_a_policy_that_does_not_require_augmentation_leaves_its_strength_to_the_run(capsys):
    cfg = build_config("tiny", overrides={"data": {"augment_probability": 0.1}})
    assert bounded_config(cfg, SitePolicy(require_augmentation=False), SiteOwnValues(), "h").data.augment_probability \
        == 0.1
