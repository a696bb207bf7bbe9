"""Every training reply is checked before it is aggregated: a table of faulty replies, each rejected for its
reason while the good ones pass; a table of hostile replies, each rejected for its reason while the strategy's
round goes on; updates clipped to the norm bound and weighted by min(declared, expected) examples."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from pedseg_core.config import FederationConfig
from pedseg_core.train.run_dir import RunDir
from server.run_state import RunState
from server.site_query import site_identity
from server.strategy import SharedWeightsStrategy
from server.update_checks import UpdateChecks, UpdateRejected
from tests.server.replies import GLOBAL, global_arrays, reply, result_json


def screen(replies, checks=None, heads=None, prototypes=None):
    checks = checks or UpdateChecks(norm_bound=10.0)
    return checks.screen(replies, global_arrays(), heads or {}, prototypes or {})


def good():
    return [reply(1, "ankle"), reply(2, "knee", "knee", shift=0.12)]


def with_arrays(**changes):
    arrays = {k: v + 0.1 for k, v in GLOBAL.items()}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


FAULTS = [
    ("NaN", dict(arrays=with_arrays(**{"enc.weight": np.full((4, 3), np.nan, np.float32)})), "non-finite"),
    ("inf", dict(arrays=with_arrays(**{"dec.bias": np.array([np.inf, 0, 0, 0], np.float32)})), "non-finite"),
    ("wrong shape", dict(arrays=with_arrays(**{"enc.weight": np.zeros((3, 4), np.float32)})), "expected float32[4, 3]"),
    ("wrong dtype", dict(arrays=with_arrays(**{"dec.bias": np.zeros(4, np.float64)})), "float64"),
    ("missing key", dict(arrays=with_arrays(**{"dec.bias": None})), "missing keys: dec.bias"),
    ("private key", dict(arrays=with_arrays(**{"norm.ankle.weight": np.ones(4, np.float32)})),
     "keys that are not shared weights: norm.ankle.weight"),
    ("zero examples", dict(examples=0), "must be a positive number"),
    ("negative examples", dict(examples=-5), "must be a positive number"),
    ("NaN examples", dict(examples=float("nan")), "not finite"),
    ("absurd update", dict(shift=500.0), "exceeds 1000 x the median"),
]


@pytest.mark.parametrize("name, fault, reason", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_faulty_reply_is_rejected_for_its_reason(name, fault, reason):
    replies = [*good(), reply(3, "shoulder", "shoulder", **fault)]
    accepted, rejected, _ = screen(replies)
    assert [m.metadata.src_node_id for m in accepted] == [1, 2]
    ((msg, why),) = rejected
    assert msg.metadata.src_node_id == 3 and reason in why, why


def test_a_reply_without_its_records_is_rejected_not_raised():
    no_site = reply(3, "x")
    del no_site.content["site"]
    no_arrays = reply(4, "y")
    del no_arrays.content["arrays"]
    bad_site = reply(5, "z")
    bad_site.content["site"] = ConfigRecord({"joint": "ankle"})  # no site name
    accepted, rejected, _ = screen([*good(), no_site, no_arrays, bad_site])
    assert len(accepted) == 2
    assert [why for _, why in rejected] == [
        "no site record", "no shared arrays", "site name None: expected a string of letters, digits, '.', '_' and '-'"]


def test_an_update_weighs_at_most_the_expected_examples():
    checks = UpdateChecks(norm_bound=10.0, expected_examples=40)
    accepted, rejected, _ = screen([reply(1, "ankle", examples=8), reply(2, "knee", "knee", examples=1e9)], checks)
    assert rejected == [] and [checks.weight(m) for m in accepted] == [8.0, 40.0]


def test_an_update_over_the_norm_bound_is_clipped_an_absurd_one_rejected():
    checks = UpdateChecks(norm_bound=10.0)
    two = [reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=5.0)]  # 50x the other: clipped to 10x
    accepted, rejected, norms = screen(two, checks)
    assert [m.metadata.src_node_id for m in accepted] == [1, 2] and rejected == []
    assert norms["knee"] == pytest.approx(5.0 * np.sqrt(16), rel=1e-6)
    clipped = {k: a.numpy() for k, a in accepted[1].content["arrays"].items()}
    assert all(np.allclose(v, GLOBAL[k] + 1.0) for k, v in clipped.items())  # 10 x the other's 0.1 shift
    assert checks.clipped == {"knee": {"update": [pytest.approx(20.0), pytest.approx(4.0)]}}
    unclipped = screen([reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=5.0)], UpdateChecks(0))[0]
    assert np.allclose(unclipped[1].content["arrays"]["dec.bias"].numpy(), 5.0)  # norm_bound 0: no clipping
    accepted, rejected, _ = screen([reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=200.0)])
    assert len(accepted) == 1 and "exceeds 1000 x the median 0.4 of the other sites' (absurd)" in rejected[0][1]
    assert len(screen([reply(1, "ankle", shift=100.0)])[0]) == 1  # alone in its round: nothing to compare with


def test_heads_are_clipped_to_the_norm_bound_of_their_joints_other_heads():
    pooled = {"ankle": {"head.weight": Array(np.zeros((3, 2), np.float32))}}

    def with_head(node, value):
        return reply(node, f"ankle-{node}", "ankle", **{"joint-arrays": ArrayRecord(
            {"head.weight": Array(np.full((3, 2), value, np.float32))})})

    checks = UpdateChecks(norm_bound=10.0)
    accepted, rejected, _ = screen([with_head(1, 1.0), with_head(2, 1.0), with_head(3, 50.0)], checks, pooled)
    assert len(accepted) == 3 and rejected == []
    assert np.allclose(accepted[2].content["joint-arrays"]["head.weight"].numpy(), 10.0)
    assert list(checks.clipped) == ["ankle-3"] and "head" in checks.clipped["ankle-3"]
    accepted, rejected, _ = screen([with_head(1, 1.0), with_head(2, 1.0), with_head(3, 5000.0)], heads=pooled)
    assert len(accepted) == 2 and "head norm" in rejected[0][1] and "(absurd)" in rejected[0][1]


def test_prototypes_must_be_of_the_sites_own_joint_and_finite():
    def with_prototypes(joint, value, slices=10):
        msg = reply(3, "shoulder", "shoulder", prototypes=ArrayRecord({f"{joint}|0": Array(value)}))
        msg.content["metrics"]["prototype-slices"] = slices
        return msg

    vector = np.ones(8, np.float32)
    known = {"shoulder|0": np.zeros(8, np.float32)}
    cases = [(with_prototypes("shoulder", vector), None),
             (with_prototypes("ankle", vector), "not a prototype of joint shoulder"),
             (with_prototypes("shoulder", np.full(8, np.nan, np.float32)), "finite vector"),
             (with_prototypes("shoulder", np.ones(6, np.float32)), "shape [8]"),
             (with_prototypes("shoulder", vector, slices=0), "positive prototype-slices")]
    for msg, reason in cases:
        reasons = [why for _, why in screen([*good(), msg], prototypes=known)[1]]
        assert reasons == [] if reason is None else (len(reasons) == 1 and reason in reasons[0]), reasons


def test_heads_of_one_joint_must_match_the_pooled_head():
    pooled = {"ankle": {"head.weight": Array(np.zeros((3, 2), np.float32))}}

    def with_head(node, value):
        return reply(node, f"ankle-{node}", "ankle", **{"joint-arrays": ArrayRecord({"head.weight": Array(value)})})

    accepted, rejected, _ = screen([with_head(1, np.ones((3, 2), np.float32)),
                                    with_head(2, np.ones((2, 2), np.float32))], heads=pooled)
    assert len(accepted) == 1 and "head: head.weight is float32[2, 2], expected float32[3, 2]" in rejected[0][1]
    # without a pooled head yet, the round's first head of the joint is the reference of the others
    accepted, rejected, _ = screen([with_head(1, np.ones((3, 2), np.float32)),
                                    with_head(2, np.ones((2, 2), np.float32))])
    assert len(accepted) == 1 and len(rejected) == 1


def test_non_finite_metrics_are_rejected():
    msg = reply(3, "shoulder", "shoulder")
    msg.content["metrics"] = MetricRecord({"num-examples": 12, "train-loss": float("nan")})
    assert "metric train-loss is not finite" in screen([*good(), msg])[1][0][1]


def test_a_second_reply_in_the_name_of_a_site_is_rejected():
    accepted, rejected, _ = screen([*good(), reply(3, "knee", "knee")])
    assert [m.metadata.src_node_id for m in accepted] == [1, 2]
    assert rejected[0][1] == "a second reply of this round from site knee"


def test_an_array_whose_bytes_differ_from_its_label_is_rejected():
    msg = reply(3, "shoulder", "shoulder")
    lying = Array(np.zeros(1, np.float64))
    lying.shape, lying.dtype = [4, 3], "float32"  # claims the global shape and dtype
    msg.content["arrays"]["enc.weight"] = lying
    assert "not what it declares" in screen([*good(), msg])[1][0][1]


def test_a_known_node_may_not_answer_as_another_site():
    checks = UpdateChecks(norm_bound=10.0)
    known = {1: ("ankle", "ankle"), 2: ("knee", "knee")}
    accepted, rejected, _ = checks.screen([reply(1, "knee", "knee"), reply(2, "knee", "knee")], global_arrays(), {},
                                          {}, known)
    assert [m.metadata.src_node_id for m in accepted] == [2]
    assert "answers as knee (knee), but this node is ankle (ankle)" in rejected[0][1]


def test_prototypes_of_a_round_share_their_scales_and_size():
    def with_prototypes(node, site, vectors):
        msg = reply(node, site, site, prototypes=ArrayRecord({f"{site}|{s}": Array(v) for s, v in vectors.items()}))
        msg.content["metrics"]["prototype-slices"] = 40
        return msg

    first = with_prototypes(1, "ankle", {0: np.ones(8, np.float32), 1: np.ones(8, np.float32)})
    fewer = with_prototypes(2, "knee", {0: np.ones(8, np.float32)})
    shorter = with_prototypes(3, "shoulder", {0: np.ones(4, np.float32), 1: np.ones(4, np.float32)})
    accepted, rejected, _ = screen([first, fewer, shorter])
    assert [m.metadata.src_node_id for m in accepted] == [1]
    assert "scales ['0'], expected ['0', '1']" in rejected[0][1] and "shape [8]" in rejected[1][1]


def test_no_norm_bound_without_a_scale_to_compare_with():
    accepted, _, _ = screen([reply(1, "ankle", shift=0.0), reply(2, "knee", "knee", shift=0.5)])
    assert len(accepted) == 2  # the other update is zero: the bound has nothing to scale


def head_record(value):
    return ArrayRecord({"head.weight": Array(np.asarray(value, np.float32))})


def metrics(**values):
    return MetricRecord({"num-examples": 12, **values})


def site_record(**values):
    return ConfigRecord({"site": "shoulder", "joint": "shoulder", **values})


# one row per hostile reply: what it sends beyond a good reply of site shoulder, and the reason it is rejected
HOSTILE = [
    ("list metric", {"metrics": metrics(**{"train-loss": [1.0, 2.0]})}, "metric train-loss is list, not a number"),
    ("odd metric name", {"metrics": metrics(**{"../x": 1.0})}, "metric '../x' is not a metric name"),
    ("many metrics", {"metrics": metrics(**{f"m{i}": 1.0 for i in range(40)})}, "41 metrics, more than the 32"),
    ("bytes joint", {"site": ConfigRecord({"site": "shoulder", "joint": b"ankle"})}, "joint name b'ankle'"),
    ("list site", {"site": ConfigRecord({"site": ["ankle"], "joint": "ankle"})}, "site name ['ankle']"),
    ("path as site", {"site": site_record(site="../ankle")}, "site name '../ankle'"),
    ("bytes refusals", {"site": site_record(**{"refusals-json": b"[]"})}, "refusals-json is bytes, not a string"),
    ("unparsable result", {"site": site_record(**{"result-json": "{not json"})}, "result-json is not JSON"),
    ("non-numeric result", {"site": site_record(**{"result-json": json.dumps(
        {"dice": {"a": "high"}, "hd95": {}, "assd": {}, "mean_dice": 0.9})})}, "each a finite number or null"),
    ("NaN head", {"joint-arrays": head_record([[np.nan, 0.0]])}, "head: head.weight holds non-finite values"),
    ("1e30 head", {"joint-arrays": head_record([[1e30, 1e30]])}, "head norm is not finite"),
    ("wrong-shaped prototype", {"metrics": metrics(**{"prototype-slices": 10}),
                                "prototypes": ArrayRecord({"shoulder|0": Array(np.ones((2, 8), np.float32))})},
     "prototypes: shoulder|0 must be a finite vector of shape [8]"),
    ("integer prototype", {"metrics": metrics(**{"prototype-slices": 10}),
                           "prototypes": ArrayRecord({"shoulder|0": Array(np.ones(8, np.int64))})},
     "prototypes: shoulder|0 must be a finite vector"),
]


def hostile_strategy(tmp_path):
    state = RunState(federation_run="1", completed_round=0, arrays={}, strategy={})
    (tmp_path / "run").mkdir()
    strategy = SharedWeightsStrategy(FederationConfig(min_nodes=2), RunDir(tmp_path / "run"), state, num_rounds=3,
                                     expected_examples=12)
    strategy.global_arrays = global_arrays()
    strategy.rounds.begin(1)
    return strategy


@pytest.mark.parametrize("name, records, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_reply_is_rejected_for_its_reason_and_the_round_goes_on(tmp_path, name, records, reason):
    strategy = hostile_strategy(tmp_path)
    known = {"joint-arrays": head_record([[0.5, 0.5]])} if "joint-arrays" in records else {}
    prototype = {"prototypes": ArrayRecord({"ankle|0": Array(np.ones(8, np.float32))}),
                 "metrics": metrics(**{"prototype-slices": 10})} if "prototypes" in records else {}
    hostile = reply(3, "shoulder", "shoulder")
    for key, record in records.items():
        hostile.content[key] = record
    arrays, summary = strategy.aggregate_train(1, [reply(1, "ankle", **known, **prototype),
                                                   reply(2, "knee", "knee"), hostile])
    assert arrays is not None and summary["num-examples"] == 24.0  # the two good replies count
    ((rejected),) = strategy.rounds.record["rejected"]
    assert reason in rejected["reason"], rejected
    json.dumps(strategy.rounds.finish())  # the round's metrics line can be written


def test_a_hostile_evaluation_reply_is_rejected_and_the_evaluation_goes_on(tmp_path):
    strategy = hostile_strategy(tmp_path)

    def evaluation(node, site, result):
        msg = reply(node, "x")
        msg.content["site"] = ConfigRecord({"site": site, "joint": "ankle", "result-json": result})
        return msg

    replies = [evaluation(1, "ankle", result_json(0.8)), evaluation(2, b"knee", result_json(0.1)),
               evaluation(3, "hip", "[" * 100_000), evaluation(4, "toe", [result_json(0.1)])]
    assert strategy.aggregate_evaluate(3, replies)["mean-dice"] == pytest.approx(0.8)
    reasons = [r["reason"] for r in strategy.rounds.record["rejected"]]
    assert len(reasons) == 3 and "site name b'knee'" in reasons[0] and "not JSON" in reasons[1], reasons
    assert "result-json is list, not a string" in reasons[2]
    json.dumps(strategy.rounds.finish())


def test_a_dp_reply_and_a_plain_one_train_together(tmp_path):
    strategy = hostile_strategy(tmp_path)
    dp = reply(2, "knee", "knee", metrics=MetricRecord({"num-examples": 12, "epsilon": 1.5, "lr": 1e-3}))
    arrays, summary = strategy.aggregate_train(1, [reply(1, "ankle"), dp])
    assert arrays is not None and summary["train-loss"] == 1.0 and strategy.rounds.record["rejected"] == []
    assert strategy.rounds.record["sites"]["knee"]["epsilon"] == 1.5


def test_a_declared_count_beyond_the_expected_does_not_steer_the_mean(tmp_path):
    strategy = hostile_strategy(tmp_path)
    arrays, summary = strategy.aggregate_train(1, [reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=0.1),
                                                   reply(3, "hip", "hip", shift=0.4, examples=1e9)])
    assert np.allclose(arrays["dec.bias"].numpy(), 0.2)  # equal weights: (0.1 + 0.1 + 0.4) / 3
    assert summary["num-examples"] == 36.0
    assert strategy.rounds.record["capped_examples"] == {"hip": 12}


def test_a_node_is_bound_to_the_site_it_first_declared(tmp_path):
    strategy = hostile_strategy(tmp_path)  # no label query: the nodes declare themselves in their first reply
    strategy.aggregate_train(1, [reply(1, "ankle"), reply(2, "knee", "knee")])
    strategy.rounds.begin(2)
    impostor = reply(9, "knee", "knee")  # a new node that answers as knee, first in the round
    strategy.aggregate_train(2, [impostor, reply(1, "knee", "knee"), reply(2, "knee", "knee")])
    assert set(strategy.rounds.record["sites"]) == {"knee"} and strategy.roster.name(1) == "ankle"
    reasons = {r["site"]: r["reason"] for r in strategy.rounds.record["rejected"]}
    assert reasons == {"ankle": "answers as knee (knee), but this node is ankle (ankle)",
                       "knee": "a second reply of this round from site knee"}
    assert strategy.roster.name(9) == "node 9"  # the impostor was bound to nothing


def test_an_evaluation_counts_only_from_the_node_bound_to_its_site(tmp_path):
    strategy = hostile_strategy(tmp_path)
    strategy.roster.know({1: ("ankle", "ankle"), 2: ("knee", "knee")})

    def evaluation(node, site, joint, dice):
        msg = reply(node, "x")
        msg.content["site"] = ConfigRecord({"site": site, "joint": joint, "result-json": result_json(dice)})
        return msg

    replies = [evaluation(9, "ankle", "ankle", 0.1), evaluation(1, "ankle", "ankle", 0.8),
               evaluation(2, "ankle", "knee", 0.1), evaluation(2, "knee", "knee", 0.6)]
    assert strategy.aggregate_evaluate(3, replies)["mean-dice"] == pytest.approx(0.7)
    reasons = sorted(r["reason"] for r in strategy.rounds.record["rejected"])
    assert reasons == ["evaluation: a second result of this round from site ankle",
                       "evaluation: answers as ankle (knee), but this node is knee (knee)"]


def test_a_malformed_label_query_answer_declares_no_site():
    def answer(site, labels):
        msg = reply(1, "x")
        msg.content["site"] = ConfigRecord({"site": site, "joint": "ankle", "labels-json": labels})
        return msg

    assert site_identity(answer("a", json.dumps({"background": 0, "tibia": 1}))).labels == {"background": 0,
                                                                                           "tibia": 1}
    for site, labels, reason in [(b"a", "{}", "site name b'a'"), ("a", "[1, 2]", "not a JSON object"),
                                 ("a", json.dumps({"tibia": "1"}), "to integers"), ("a", b"{}", "not a JSON")]:
        with pytest.raises(UpdateRejected, match=re.escape(reason)):
            site_identity(answer(site, labels))


def test_a_clipped_update_is_aggregated_clipped_and_named_in_the_rounds_line(tmp_path):
    strategy = hostile_strategy(tmp_path)
    arrays, _ = strategy.aggregate_train(1, [reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=0.1),
                                             reply(3, "hip", "hip", shift=5.0)])
    assert np.allclose(arrays["dec.bias"].numpy(), (0.1 + 0.1 + 1.0) / 3)  # 5.0 clipped to 10 x 0.1
    assert list(strategy.rounds.record["clipped"]) == ["hip"] and strategy.rounds.record["rejected"] == []


def test_a_lone_head_is_bounded_by_its_joints_pooled_head():
    pooled = {"knee": {"head.weight": Array(np.ones((3, 2), np.float32))}}

    def with_head(value):
        return reply(2, "knee-b", "knee", **{"joint-arrays": ArrayRecord(
            {"head.weight": Array(np.full((3, 2), value, np.float32))})})

    checks = UpdateChecks(norm_bound=10.0)
    accepted, rejected, _ = screen([reply(1, "ankle"), with_head(1e6)], checks, pooled)
    assert len(accepted) == 1 and "of its joint's pooled head's norm (absurd)" in rejected[0][1]
    accepted, rejected, _ = screen([reply(1, "ankle"), with_head(101.0)], checks, pooled)  # 100 x away: clipped
    assert rejected == [] and list(checks.clipped["knee-b"]) == ["head"]
    head = accepted[1].content["joint-arrays"]["head.weight"].numpy()
    assert np.allclose(np.linalg.norm(head - 1.0), 10.0 * np.sqrt(6), rtol=1e-5)  # 10 x the pooled head's norm
    accepted, rejected, _ = screen([reply(1, "ankle"), with_head(1.5)], checks, pooled)
    assert len(accepted) == 2 and checks.clipped == {}
