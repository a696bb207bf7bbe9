"""Every training reply is checked before it is aggregated: a table of faulty replies, each rejected for its
reason while the good ones pass."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from server.update_checks import UpdateChecks
from tests.server.replies import GLOBAL, global_arrays, reply


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
    ("inflated update", dict(shift=50.0), "exceeds 10 x the median"),
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
    assert [why for _, why in rejected] == ["no site record", "no shared arrays", "malformed reply: KeyError: 'site'"]


def test_the_example_count_may_not_grow_past_the_first_declared():
    checks = UpdateChecks(norm_bound=10.0)
    screen(good(), checks)
    assert checks.declared == {"ankle": 12, "knee": 12}
    accepted, rejected, _ = screen([reply(1, "ankle", examples=8), reply(2, "knee", "knee", examples=1200)], checks)
    assert len(accepted) == 1 and "1200 exceeds the 12 this site declared first" in rejected[0][1]


def test_the_norm_bound_compares_with_the_other_sites_and_can_be_off():
    two = [reply(1, "ankle", shift=0.1), reply(2, "knee", "knee", shift=5.0)]  # 50x the other: the big one goes
    accepted, rejected, norms = screen(two)
    assert [m.metadata.src_node_id for m in accepted] == [1] and len(rejected) == 1
    assert norms["knee"] == pytest.approx(5.0 * np.sqrt(16), rel=1e-6)
    assert len(screen(two, UpdateChecks(norm_bound=0))[0]) == 2
    assert len(screen([reply(1, "ankle", shift=100.0)])[0]) == 1  # alone in its round: nothing to compare with


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
