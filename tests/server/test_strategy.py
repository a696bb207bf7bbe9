"""The server strategy on real Flower Messages: what it sends each node, what it keeps of the replies, and that a
private tensor can never enter the global model. A two-method Grid stands in for the SuperLink's node list
(the full path runs in tests/simulations/test_local_federation.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from flower_common.array_records import unpack_records
from pedseg_core.config import FederationConfig
from pedseg_core.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_FIRST,
    HEAD,
    PACKED_JSON,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    PROXIMAL_MU,
    RESULT_JSON,
    SERVER_ROUND,
    SHARE_HEAD,
)
from pedseg_core.train.run_dir import RunDir
from server.run_state import RunState
from server.strategy import SharedWeightsStrategy
from tests.server.replies import GLOBAL, global_arrays, reply, result_json

NODES = {1: ("ankle", "ankle"), 2: ("knee-a", "knee"), 3: ("knee-b", "knee")}  # node -> (site, joint)


class NodeListGrid(Grid):
    """The part of Flower's Grid a strategy's configure_* calls: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError

    def set_run(self, run_id):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError


def build_strategy(run_dir, completed_round=0, **federation):
    """The run's strategy over NODES, as server.app builds it (3 sites, every one needed)."""
    fed = FederationConfig(evaluate_every=1, min_nodes=3, quorum_timeout=5.0, **federation)
    run_dir.mkdir(exist_ok=True)
    state = RunState(federation_run="1", completed_round=completed_round, arrays={}, strategy={})
    return SharedWeightsStrategy(fed, RunDir(run_dir), state, num_rounds=3, sites=NODES)


@pytest.fixture(autouse=True)
def server_process(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what Flower sets in a ServerApp process before it runs
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def strategy(tmp_path):
    return build_strategy(tmp_path / "run")


def send_round(strategy, server_round, arrays=None):
    return {m.metadata.dst_node_id: m for m in strategy.configure_train(
        server_round, arrays or global_arrays(), ConfigRecord({"lr": 0.01}), NodeListGrid(NODES))}


def site_reply(node, shift=0.1, examples=12.0, **records):
    site, joint = NODES[node]
    return reply(node, site, joint, shift=shift, examples=examples, **records)


def test_a_reply_with_a_private_key_is_dropped_whole_and_never_reaches_the_global_model(strategy):
    send_round(strategy, 1)
    leaky = {k: v + 5.0 for k, v in GLOBAL.items()} | {"norm.knee.weight": np.ones(4, np.float32)}
    arrays, _ = strategy.aggregate_train(1, [site_reply(1, 0.1), site_reply(2, 0.3), reply(3, "knee-b", "knee",
                                                                                       arrays=leaky)])
    assert set(arrays.keys()) == set(GLOBAL)  # exactly the global keys, nothing of the private one
    np.testing.assert_allclose(arrays["enc.weight"].numpy(), 0.2)  # the mean of the two clean replies only
    (rejected,) = strategy.rounds.record["rejected"]
    assert rejected["site"] == "knee-b" and "norm.knee.weight" in rejected["reason"]
    assert set(strategy.rounds.record["sites"]) == {"ankle", "knee-a"}


def test_a_reply_missing_a_shared_key_is_dropped_and_the_others_aggregate_every_key(strategy):
    send_round(strategy, 1)
    partial = {"enc.weight": GLOBAL["enc.weight"] + 9.0}
    arrays, metrics = strategy.aggregate_train(1, [site_reply(1, 0.1, examples=10), site_reply(2, 0.4, examples=30),
                                                   reply(3, "knee-b", "knee", arrays=partial)])
    np.testing.assert_allclose(arrays["dec.bias"].numpy(), (10 * 0.1 + 30 * 0.4) / 40, rtol=1e-6)
    assert metrics["num-examples"] == 40.0
    assert "missing keys: dec.bias" in strategy.rounds.record["rejected"][0]["reason"]


def prototypes(joint, value):
    return ArrayRecord({f"{joint}|0": Array(np.full(8, value, np.float32)), f"{joint}|1": Array(
        np.full(8, 2 * value, np.float32))})


def test_prototypes_are_pooled_per_joint_by_slices_and_sent_to_every_node_next_round(strategy):
    send_round(strategy, 1)
    replies = []
    for node, value, slices in ((1, 1.0, 10), (2, 2.0, 10), (3, 5.0, 30)):
        msg = site_reply(node, **{PROTOTYPES: prototypes(NODES[node][1], value)})
        msg.content["metrics"][PROTOTYPE_SLICES] = slices
        replies.append(msg)
    strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(strategy.pools.prototypes["ankle|0"], 1.0)
    np.testing.assert_allclose(strategy.pools.prototypes["knee|0"], (10 * 2.0 + 30 * 5.0) / 40)
    np.testing.assert_allclose(strategy.pools.prototypes["knee|1"], 2 * (10 * 2.0 + 30 * 5.0) / 40)
    sent = send_round(strategy, 2)
    for msg in sent.values():
        assert set(msg.content[PROTOTYPES].keys()) == {"ankle|0", "ankle|1", "knee|0", "knee|1"}


def test_a_prototype_of_another_joint_is_refused(strategy):
    send_round(strategy, 1)
    forged = site_reply(1, **{PROTOTYPES: prototypes("knee", 3.0)})  # the ankle site claims a knee prototype
    forged.content["metrics"][PROTOTYPE_SLICES] = 10
    strategy.aggregate_train(1, [forged, site_reply(2), site_reply(3)])
    assert "not a prototype of joint ankle" in strategy.rounds.record["rejected"][0]["reason"]
    assert strategy.pools.prototypes == {}


def head(value):
    return ArrayRecord({"head.knee.weight": Array(np.full((3, 2), value, np.float32))})


def test_heads_are_pooled_only_within_a_joint_and_go_back_only_to_its_sites(strategy):
    sent = send_round(strategy, 1)
    assert sent[2].content[CONFIG][SHARE_HEAD] and sent[3].content[CONFIG][SHARE_HEAD]
    assert not sent[1].content[CONFIG][SHARE_HEAD]  # the only ankle site keeps its head
    strategy.aggregate_train(1, [site_reply(1), site_reply(2, examples=10, **{HEAD: head(1.0)}),
                                 site_reply(3, examples=30, **{HEAD: head(3.0)})])
    np.testing.assert_allclose(strategy.pools.joint_heads["knee"]["head.knee.weight"], (10 * 1.0 + 30 * 3.0) / 40)
    assert set(strategy.pools.joint_heads) == {"knee"}
    sent = send_round(strategy, 2)
    np.testing.assert_allclose(sent[2].content[HEAD]["head.knee.weight"].numpy(), 2.5)
    assert HEAD in sent[3].content and HEAD not in sent[1].content


def test_the_evaluation_riding_on_round_2_is_logged_as_round_1s(strategy, tmp_path):
    sent = send_round(strategy, 1)
    assert not any(m.content[CONFIG][EVALUATE_FIRST] for m in sent.values())  # nothing to evaluate yet
    strategy.aggregate_train(1, [site_reply(n) for n in NODES])
    strategy.end_round(1)
    sent = send_round(strategy, 2)
    assert all(m.content[CONFIG][EVALUATE_FIRST] for m in sent.values())
    replies = [site_reply(n) for n in NODES]
    for msg, dice in zip(replies, (0.9, 0.8, 0.7)):
        msg.content["site"][RESULT_JSON] = result_json(dice)
    replies[2].content["site"][RESULT_JSON] = json.dumps({"dice": 1})  # malformed: rejected, not counted
    strategy.aggregate_train(2, replies)
    strategy.end_round(2)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    first = next(x for x in lines if x.get("round") == 1)
    assert first["evaluation"]["mean_dice"] == pytest.approx(0.85)
    assert set(first["evaluation"]["sites"]) == {"ankle", "knee-a"}
    assert "evaluation" not in next((x for x in lines if x.get("round") == 2), {})


def test_an_error_reply_is_named_as_missing_not_counted(strategy):
    send_round(strategy, 1)
    error = Message(metadata=site_reply(3).metadata, error=Error(0, "boom"))
    arrays, _ = strategy.aggregate_train(1, [site_reply(1), site_reply(2), error])
    assert arrays is not None and set(strategy.rounds.record["sites"]) == {"ankle", "knee-a"}
    assert {"site": "knee-b", "reason": "error reply"} in strategy.rounds.record["missing"]


def test_the_shared_weights_travel_packed_with_their_index_in_each_nodes_config(strategy):
    sent = send_round(strategy, 1)
    for msg in sent.values():
        assert list(msg.content[ARRAYS].keys()) == ["packed"]
        content = RecordDict({ARRAYS: msg.content[ARRAYS]})
        unpack_records(content, str(msg.content[CONFIG][PACKED_JSON]))
        assert {k: v.numpy().tolist() for k, v in content[ARRAYS].items()} == {k: v.tolist() for k, v in GLOBAL.items()}


GLOBAL_WITH_COUNTER = ArrayRecord({"enc.weight": Array(np.zeros((4, 3), np.float32)),
                                   "bn.num_batches_tracked": Array(np.array(10, np.int64))})


def counted_reply(node, shift, steps, examples=12.0):
    """A reply over GLOBAL_WITH_COUNTER: the weights moved by `shift`, BatchNorm's counter by `steps`."""
    site, joint = NODES[node]
    arrays = {"enc.weight": np.full((4, 3), shift, np.float32),
              "bn.num_batches_tracked": np.array(10 + steps, np.int64)}
    return reply(node, site, joint, arrays=arrays, examples=examples)


@pytest.mark.parametrize("aggregation, expected", [("mean", 0.2), ("median", 0.2), ("trimmed-mean", 0.2),
                                                   ("krum", None), ("multikrum", None), ("bulyan", None)])
def test_every_rule_aggregates_the_checked_replies_in_the_global_dtypes(tmp_path, aggregation, expected):
    strategy = build_strategy(tmp_path / "run", aggregation=aggregation)
    send_round(strategy, 1, GLOBAL_WITH_COUNTER)
    arrays, metrics = strategy.aggregate_train(1, [counted_reply(1, 0.1, 1), counted_reply(2, 0.2, 2),
                                                   counted_reply(3, 0.3, 4)])
    assert list(arrays.keys()) == list(GLOBAL_WITH_COUNTER.keys())
    weights, counter = arrays["enc.weight"].numpy(), arrays["bn.num_batches_tracked"].numpy()
    assert weights.dtype == np.float32 and weights.shape == (4, 3)
    assert counter.dtype == np.int64 and counter.shape == () and 11 <= int(counter) <= 14  # a step count, not 12.33
    if expected is None:  # a selection rule: the mean of some of the replies
        assert 0.1 - 1e-6 <= weights.min() and weights.max() <= 0.3 + 1e-6
    else:
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert metrics["num-examples"] == 36.0 and strategy.rounds.record["aggregation"] == aggregation


def test_a_rejected_reply_never_reaches_the_inner_strategy(strategy):
    seen = []
    inner = strategy.rule.aggregate_train

    def spy(server_round, replies):
        seen.extend(replies)
        return inner(server_round, replies)

    strategy.rule.aggregate_train = spy
    send_round(strategy, 1)
    leaky = {k: v + 0.3 for k, v in GLOBAL.items()} | {"norm.knee.weight": np.ones(4, np.float32)}
    strategy.aggregate_train(1, [site_reply(1, 0.1, examples=10), site_reply(2, 0.3, examples=30),
                                 reply(3, "knee-b", "knee", arrays=leaky)])
    assert sorted(m.metadata.src_node_id for m in seen) == [1, 2]
    for msg in seen:  # each as Flower's strategies expect it: one ArrayRecord, one MetricRecord with the weight
        assert list(msg.content.array_records) == [ARRAYS] and set(msg.content[ARRAYS].keys()) == set(GLOBAL)
        assert list(msg.content.metric_records) == ["metrics"] and list(msg.content["metrics"].keys()) == [
            "num-examples"]


def test_krum_keeps_an_outlier_update_out_of_the_global_weights(tmp_path):
    strategy = build_strategy(tmp_path / "run", aggregation="krum", norm_bound=0.0)
    send_round(strategy, 1)
    arrays, _ = strategy.aggregate_train(1, [site_reply(1, 0.1), site_reply(2, 0.12), site_reply(3, 50.0)])
    assert arrays["enc.weight"].numpy().max() <= 0.12 + 1e-6  # one of the two close updates, nothing of the outlier
    assert set(strategy.rounds.record["sites"]) == {"ankle", "knee-a", "knee-b"}  # checked and counted, not chosen


def test_bulyan_with_too_few_updates_leaves_the_global_weights_and_says_why(strategy, tmp_path):
    strategy = build_strategy(tmp_path / "bulyan", aggregation="bulyan")
    send_round(strategy, 1)
    arrays, metrics = strategy.aggregate_train(1, [site_reply(1), site_reply(2)])  # 4 x 0 + 3 needed
    assert arrays is None and metrics["num-examples"] == 24.0
    assert "2 checked updates are too few" in strategy.rounds.record["aggregation_skipped"]


@pytest.mark.parametrize("aggregation", ["mean", "median"])
def test_fedprox_sends_its_proximal_term_with_any_rule(tmp_path, aggregation):
    prox = build_strategy(tmp_path / "prox", strategy="fedprox", proximal_mu=0.05, aggregation=aggregation)
    assert all(m.content[CONFIG][PROXIMAL_MU] == 0.05 for m in send_round(prox, 1).values())
    plain = build_strategy(tmp_path / "plain", aggregation=aggregation)
    assert all(PROXIMAL_MU not in m.content[CONFIG] for m in send_round(plain, 1).values())


def test_a_resumed_run_numbers_its_rounds_after_those_it_has(tmp_path):
    strategy = build_strategy(tmp_path / "run", completed_round=2)
    sent = send_round(strategy, 1)  # Flower's first round of the resumed run is the run's third
    assert all(m.content[CONFIG][SERVER_ROUND] == 3 for m in sent.values()) and strategy.rounds.record["round"] == 3
    strategy.aggregate_train(1, [site_reply(n) for n in NODES])
    evaluation = strategy.configure_evaluate(1, global_arrays(), ConfigRecord(), NodeListGrid(NODES))
    assert len(list(evaluation)) == 3  # the run's last round: the final evaluation


def test_under_secure_aggregation_the_global_weights_are_the_mean_every_reply_carries(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    state = RunState(federation_run="1", completed_round=0, arrays={}, strategy={})
    secure = SimpleNamespace(report={"sites": 3, "asked": 3})
    strategy = SharedWeightsStrategy(FederationConfig(min_nodes=3, secure_aggregation=True), RunDir(run), state,
                                     num_rounds=3, sites=NODES, secure=secure)
    send_round(strategy, 1)
    arrays, _ = strategy.aggregate_train(1, [site_reply(n, 0.25, examples=10 * n) for n in NODES])
    np.testing.assert_array_equal(arrays["enc.weight"].numpy(), np.full((4, 3), 0.25, np.float32))
    assert strategy.rounds.record["secure_aggregation"] == secure.report
    assert strategy.rounds.record["update_norms"] == {}
