"""`pedseg federate --local/--simulation --policy` with a DP policy: the sites train with group norms (DP-SGD
cannot bound a slice's gradient through BatchNorm), unless the run asks for batch norms explicitly, which is
refused in one line before anything starts."""

from __future__ import annotations

import pytest

from flower_common.run_config import config_from_run_config
from pedseg_core.errors import PedsegError
from simulations.local import norms_for_policy

DP = "dp:\n  epsilon: 8.0\n  delta: 1.0e-5\n  max_grad_norm: 1.0\n"


def test_a_dp_policy_gets_group_norms_and_says_so(tmp_path, capsys):
    policy = tmp_path / "dp.yaml"
    policy.write_text(DP, encoding="utf-8")
    resolved = norms_for_policy(config_from_run_config({"preset": "tiny", "overrides": "train.steps_per_epoch=2"}),
                                policy)
    assert resolved.model.norm == "group" and resolved.train.steps_per_epoch == 2
    assert "group norms" in capsys.readouterr().err


def test_batch_norms_asked_for_under_a_dp_policy_are_refused(tmp_path):
    policy = tmp_path / "dp.yaml"
    policy.write_text(DP, encoding="utf-8")
    with pytest.raises(PedsegError, match=r"dp.yaml: asks for DP-SGD, which needs group norms"):
        norms_for_policy(config_from_run_config({"preset": "tiny", "overrides": "model.norm=batch"}), policy)


def test_without_dp_the_run_config_is_left_alone(tmp_path):
    config = config_from_run_config({"preset": "tiny", "overrides": "model.norm=batch"})
    assert norms_for_policy(config, None) is config
    bad = tmp_path / "bad.yaml"
    bad.write_text("dp: {epsilon: -1}\n", encoding="utf-8")
    with pytest.raises(PedsegError, match="bad.yaml"):  # a bad policy is still refused first
        norms_for_policy(config, bad)
