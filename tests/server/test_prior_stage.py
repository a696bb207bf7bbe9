"""Stage 1's replies (the shape prior) go through the update checks and weights of the rounds: a DP site's reply
(no losses) trains with a plain one, a hostile one is rejected and noted, the round goes on."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, MetricRecord

from pedseg_core.config import FederationConfig
from server.prior_stage import PriorFedAvg
from server.update_checks import UpdateChecks
from tests.server.replies import GLOBAL, global_arrays, reply


def prior_reply(node, shift=0.1, **metrics):
    """A stage-1 reply: arrays and metrics, no site record."""
    msg = reply(node, "unused", shift=shift)
    del msg.content["site"]
    msg.content["metrics"] = MetricRecord({"num-examples": 12, **metrics})
    return msg


@pytest.fixture
def prior():
    strategy = PriorFedAvg(FederationConfig(min_nodes=2),
                           UpdateChecks(10.0, expected_examples=12, identified=False))
    strategy.global_arrays = global_arrays()
    return strategy


def test_a_dp_reply_and_a_plain_one_train_the_prior_together(prior):
    plain = prior_reply(1, 0.1, **{"prior-recon-first": 2.0, "prior-recon-last": 1.0})
    dp = prior_reply(2, 0.3, epsilon=0.5)
    arrays, metrics = prior.aggregate_train(1, [plain, dp])
    assert np.allclose(arrays["dec.bias"].numpy(), 0.2) and arrays["dec.bias"].dtype == "float32"
    assert dict(metrics) == {"num-examples": 24.0, "epsilon": 0.5, "prior-recon-first": 2.0, "prior-recon-last": 1.0}


def test_a_hostile_prior_reply_is_rejected_and_the_round_goes_on(prior):
    nan = prior_reply(3)
    nan.content["arrays"]["enc.weight"] = Array(np.full((4, 3), np.nan, np.float32))
    huge = prior_reply(4)
    huge.content["arrays"]["dec.bias"] = Array(np.full(4, 1e30, np.float32))
    listed = prior_reply(5)
    listed.content["metrics"]["num-examples"] = [12.0, 12.0]
    inflated = prior_reply(6, 0.7)
    inflated.content["metrics"]["num-examples"] = 1e9
    arrays, metrics = prior.aggregate_train(1, [prior_reply(1), prior_reply(2), nan, huge, listed, inflated])
    assert metrics["num-examples"] == 36.0  # the inflated one weighs the expected 12
    assert np.allclose(arrays["dec.bias"].numpy(), (0.1 + 0.1 + 0.7) / 3)
    reasons = {r["site"]: r["reason"] for r in prior.notes[1]["rejected"]}
    assert reasons == {"node 3": "shared weights: enc.weight holds non-finite values",
                       "node 4": "update norm is not finite", "node 5": "metric num-examples is list, not a number"}
    assert set(GLOBAL) == set(arrays.keys())


def test_an_update_over_the_norm_bound_is_clipped_in_the_prior(prior):
    arrays, _ = prior.aggregate_train(1, [prior_reply(1, 0.1), prior_reply(2, 0.1), prior_reply(3, 5.0)])
    assert np.allclose(arrays["dec.bias"].numpy(), (0.1 + 0.1 + 1.0) / 3)  # 5.0 clipped to 10 x 0.1
    assert "node 3" in prior.notes[1]["clipped"]
