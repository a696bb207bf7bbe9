"""The site's policy and audit mods around a handler: what leaves is cut to the policy and written to the audit
log first; `pedseg audit` reads it back and flags image-sized arrays and per-case metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from client import app as clientapp
from client.audit_mod import audit_mod
from client.message_dtype_mod import message_dtype_mod
from client.policy_mod import policy_mod
from pedseg.cli import main as pedseg
from pedseg_core.errors import PedsegError
from pedseg_core.train.site_algorithm_cache import SiteAlgorithmCache

RESULT = {"dice": {"tibia": 0.9}, "hd95": {"tibia": 2.0}, "assd": {"tibia": 0.5}, "mean_dice": 0.9, "cases": 2,
          "per_case": {"case_007": {"dice": {"tibia": 0.9}}}}


def context(tmp_path, policy: str = "", **run_config) -> Context:
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(tmp_path / "data"), "state-dir": str(tmp_path / "state"),
            "policy": policy}
    return Context(run_id=5, node_id=1, node_config=node, state=RecordDict(),
                   run_config={"preset": "tiny", "scheme": "full", **run_config})


def train_message(share_head: bool = True) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((4, 3), np.float32))}),
                          "config": ConfigRecord({"server-round": 3, "federation-run": "5", "share-head": share_head}),
                          "joint-arrays": ArrayRecord({"head": Array(np.ones(2, np.float32))})})
    metadata = Metadata(run_id=5, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="3", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def site_handler(msg: Message, ctx: Context) -> Message:
    """What a site sends: shared weights, metrics, prototypes over 40 slices, its head when asked, and its
    evaluation (with per-case metrics, which the policy must cut); it records what it was given."""
    site_handler.seen = {"share-head": msg.content["config"]["share-head"], "head-in": "joint-arrays" in msg.content}
    reply = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((4, 3), np.float32))}),
                        "metrics": MetricRecord({"num-examples": 12, "train-loss": 1.0, "prototype-slices": 40}),
                        "site": ConfigRecord({"site": "ankle", "joint": "ankle", "result-json": json.dumps(RESULT)}),
                        "prototypes": ArrayRecord({"ankle|0": Array(np.ones(8, np.float32))})})
    if msg.content["config"]["share-head"]:
        reply["joint-arrays"] = ArrayRecord({"head": Array(np.ones(2, np.float32))})
    return Message(reply, reply_to=msg)


def through_mods(msg: Message, ctx: Context) -> Message:
    return audit_mod(msg, ctx, lambda m, c: policy_mod(m, c, site_handler))


def test_the_default_policy_lets_no_per_case_metric_leave_and_the_audit_log_shows_it(tmp_path, capsys):
    reply = through_mods(train_message(), context(tmp_path, **{"per-case-metrics": True}))
    result = json.loads(reply.content["site"]["result-json"])
    assert "per_case" not in result and result["cases"] == 2 and result["dice"] == RESULT["dice"]
    assert json.loads(reply.content["site"]["refusals-json"]) == [
        "per-case metrics: refused by the site's policy (per-bone means and the case count only)"]
    assert "prototypes" in reply.content and "joint-arrays" in reply.content  # allowed by default
    (line,) = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (line["run"], line["federation_run"], line["round"], line["type"]) == (5, "5", 3, "train")
    w = next(a for a in line["arrays"] if a["key"] == "w")
    assert w["shape"] == [4, 3] and w["dtype"] == "float32" and len(w["sha256"]) == 64
    assert line["metrics"]["metrics"]["num-examples"] == 12 and "per_case" not in line
    assert pedseg(["audit", str(tmp_path / "state")]) == 0
    assert "nothing flagged" in capsys.readouterr().out


def test_a_strict_policy_keeps_prototypes_and_head_at_the_site(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("share_prototypes: false\nshare_head: false\nper_case_metrics: true\n", encoding="utf-8")
    reply = through_mods(train_message(), context(tmp_path, str(policy), **{"per-case-metrics": True}))
    assert site_handler.seen == {"share-head": False, "head-in": False}  # neither asked for nor given the pool
    assert "prototypes" not in reply.content and "joint-arrays" not in reply.content
    assert "prototype-slices" not in reply.content["metrics"]
    assert "per_case" in json.loads(reply.content["site"]["result-json"])  # this policy allows them


def test_prototypes_over_too_few_slices_stay(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_prototype_slices: 64\n", encoding="utf-8")
    reply = through_mods(train_message(), context(tmp_path, str(policy)))
    assert "prototypes" not in reply.content  # 40 slices behind them, the policy needs 64
    assert "needs at least 64" in reply.content["site"]["refusals-json"]


def test_the_audit_flags_an_image_sized_array_and_per_case_metrics(tmp_path, capsys):
    def leaky(msg: Message, ctx: Context) -> Message:
        reply = site_handler(msg, ctx)
        reply.content["arrays"]["slice"] = Array(np.zeros((64, 64), np.float32))
        return reply

    policy = tmp_path / "policy.yaml"
    policy.write_text("per_case_metrics: true\n", encoding="utf-8")
    ctx = context(tmp_path, str(policy), **{"per-case-metrics": True})
    audit_mod(train_message(), ctx, lambda m, c: policy_mod(m, c, leaky))
    assert pedseg(["audit", str(tmp_path / "state")]) == 1
    out = capsys.readouterr().out
    assert "FLAG: image-sized array arrays/slice [64, 64]" in out and "FLAG: per-case metrics" in out
    assert "1 flagged message(s)" in out


def test_an_error_that_leaves_the_site_is_audited_too(tmp_path):
    def failing(msg: Message, ctx: Context) -> Message:
        raise RuntimeError("site ankle: case_007 cannot be read")

    try:
        audit_mod(train_message(), context(tmp_path), lambda m, c: policy_mod(m, c, failing))
    except RuntimeError:
        pass
    else:
        raise AssertionError("the handler's error must reach Flower")
    (line,) = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert line["error"] == "RuntimeError: site ankle: case_007 cannot be read" and line["round"] == 3


def test_fp16_messages_give_the_handler_fp32_and_send_its_update_in_fp16(tmp_path):
    weights = np.linspace(-0.2, 0.2, 12, dtype=np.float32).reshape(4, 3)
    msg = train_message()
    msg.content["arrays"] = ArrayRecord({"w": Array(weights.astype(np.float16))})
    msg.content["config"]["message-dtype"] = "fp16"
    seen = {}

    def handler(m: Message, ctx: Context) -> Message:
        seen["dtype"] = m.content["arrays"]["w"].numpy().dtype
        trained = m.content["arrays"]["w"].numpy() + np.float32(1e-3)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(trained)}),
                                   "site": ConfigRecord({"site": "ankle", "joint": "ankle"})}), reply_to=m)

    reply = message_dtype_mod(msg, context(tmp_path), handler)
    sent = reply.content["arrays"]["w"].numpy()
    assert seen["dtype"] == np.float32
    assert sent.dtype == np.float16 and np.allclose(sent, 1e-3, rtol=2 ** -10)
    assert reply.content["site"]["arrays-encoding"] == "fp16-update"
    plain = message_dtype_mod(train_message(), context(tmp_path), handler)  # the run did not ask: fp32 as before
    assert plain.content["arrays"]["w"].numpy().dtype == np.float32 and "arrays-encoding" not in plain.content["site"]


def test_the_policy_mod_keeps_the_sites_own_refusals_before_its_own(tmp_path):
    """A site whose evaluation its policy withheld says so in its site record; the mod adds its refusals after."""
    def withholding(msg: Message, ctx: Context) -> Message:
        reply = site_handler(msg, ctx)
        del reply.content["site"]["result-json"]
        reply.content["site"]["refusals-json"] = json.dumps(["evaluation: no metric sent"])
        return reply

    reply = policy_mod(train_message(), context(tmp_path, **{"per-case-metrics": True}), withholding)
    refusals = json.loads(reply.content["site"]["refusals-json"])
    assert refusals[0] == "evaluation: no metric sent" and refusals[1].startswith("per-case metrics: refused")


def test_a_run_outside_the_sites_policy_is_refused_audited_and_flagged(tmp_path, capsys, monkeypatch):
    """The operator's run config asks for batches of one slice: the real handler refuses before reading any data;
    the error reply names the policy item and nothing of the site; `pedseg audit` flags it."""
    monkeypatch.setattr(clientapp, "ALGORITHMS", SiteAlgorithmCache())
    ctx = context(tmp_path, overrides="train.batch_size=1")
    with pytest.raises(PedsegError) as err:
        audit_mod(train_message(), ctx, lambda m, c: policy_mod(m, c, clientapp.train))
    assert "min_batch_size (4)" in str(err.value) and str(tmp_path) not in str(err.value)
    (line,) = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert line["error"].startswith("PedsegError: refused by the site's policy: min_batch_size")
    assert "train.batch_size = 1" in capsys.readouterr().err  # the site's log
    assert pedseg(["audit", str(tmp_path / "state")]) == 1
    assert "FLAG: a request outside the site's policy (refused)" in capsys.readouterr().out
