"""The audit mod records the request behind each reply (the values the site's policy bounds and digests of the
whole run and message configuration), writes its log 0600, and with --keep-sent keeps what left as it left:
after the policy, in its wire encoding, each array's sha256 that of its audit line."""

from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from client.approved_app import AppNotApproved, approval_check
from client.audit_mod import audit_mod
from client.message_dtype_mod import message_dtype_mod
from client.packed_arrays_mod import packed_arrays_mod
from client.policy_mod import policy_mod
from flower_common.array_records import pack_records, unpack_records
from pedseg_core.audit_request import REQUEST_OPTIONS, digest
from pedseg_core.protocol import PACKED_JSON

WEIGHTS = np.linspace(-0.2, 0.2, 12, dtype=np.float32).reshape(4, 3)


def context(tmp_path, policy: str = "", keep_sent: bool = True, **run_config) -> Context:
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(tmp_path / "data"), "state-dir": str(tmp_path / "state"),
            "policy": policy, "keep-sent": keep_sent}
    return Context(run_id=5, node_id=1, node_config=node, state=RecordDict(),
                   run_config={"preset": "tiny", "scheme": "multi-domain", **run_config})


def train_message(fp16: bool = False, packed: bool = False, share_head: bool = True) -> Message:
    arrays = {"w": Array(WEIGHTS.astype(np.float16) if fp16 else WEIGHTS)}
    config = {"server-round": 3, "federation-run": "5", "share-head": share_head, "evaluate-first": False}
    content = RecordDict({"arrays": ArrayRecord(arrays), "joint-arrays": ArrayRecord({"head": Array(np.ones(2))})})
    if fp16:
        config["message-dtype"] = "fp16"
    if packed:
        config[PACKED_JSON] = pack_records(content, ("arrays",))
    content["config"] = ConfigRecord(config)
    metadata = Metadata(run_id=5, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="3", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def handler(msg: Message, ctx: Context) -> Message:
    """A site's training reply: its trained weights, its head when asked, a metric."""
    trained = msg.content["arrays"]["w"].numpy() + np.float32(1e-3)
    reply = RecordDict({"arrays": ArrayRecord({"w": Array(trained)}),
                        "metrics": MetricRecord({"num-examples": 12}),
                        "site": ConfigRecord({"site": "ankle", "joint": "ankle"})})
    if msg.content["config"]["share-head"]:
        reply["joint-arrays"] = ArrayRecord({"head": Array(np.full(2, 0.5, np.float32))})
    return Message(reply, reply_to=msg)


def as_the_site_runs(msg: Message, ctx: Context) -> Message:
    """client/app.py's order: packed arrays outermost, then the audit, the policy, the training mods."""
    return packed_arrays_mod(msg, ctx, lambda m, c: audit_mod(
        m, c, lambda m2, c2: policy_mod(m2, c2, lambda m3, c3: message_dtype_mod(m3, c3, handler))))


def audit_lines(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]


def test_each_audit_line_records_the_request_that_shaped_the_reply(tmp_path):
    ctx = context(tmp_path, keep_sent=False, overrides="train.batch_size=8 train.learning_rate=0.001")
    as_the_site_runs(train_message(), ctx)
    as_the_site_runs(train_message(share_head=False), ctx)
    first, second = audit_lines(tmp_path)
    request = first["request"]
    assert set(request["values"]) == set(REQUEST_OPTIONS)
    assert request["values"]["train.batch_size"] == 8 and request["values"]["train.learning_rate"] == 0.001
    assert request["values"]["scheme"] == "multi-domain" and request["values"]["data.image_size"] == 64
    assert request["message"] == {"server-round": 3, "federation-run": "5", "share-head": True,
                                  "evaluate-first": False}
    assert request["run_config_sha256"] == digest(dict(ctx.run_config)) == second["request"]["run_config_sha256"]
    assert request["message_config_sha256"] == digest(request["message"])
    assert second["request"]["message_config_sha256"] != request["message_config_sha256"]  # share-head differs
    assert "kept" not in first and not (tmp_path / "state" / "run-5" / "sent").exists()


def test_a_run_config_the_site_cannot_read_is_recorded_with_its_digest(tmp_path):
    ctx = context(tmp_path, keep_sent=False, overrides="train.batch_size=")
    try:
        audit_mod(train_message(), ctx, lambda m, c: policy_mod(m, c, handler))
    except Exception:  # noqa: BLE001 - the handler's own error, if any, reaches Flower
        pass
    (line,) = audit_lines(tmp_path)
    assert "run_config_error" in line["request"] and line["request"]["run_config_sha256"] == digest(ctx.run_config)


def test_the_kept_copy_is_what_left_after_the_policy_in_its_wire_encoding(tmp_path):
    """fp16 updates, packed on the wire, a head the policy keeps: the copy holds the fp16 update, no head, and
    each array's sha256 equals its audit line's and that of the array the server unpacks."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("share_head: false\n", encoding="utf-8")
    reply = as_the_site_runs(train_message(fp16=True, packed=True), context(tmp_path, str(policy)))
    (line,) = audit_lines(tmp_path)
    assert line["kept"] == "run-5/sent/round-003.wire.pt"
    kept_path = tmp_path / "state" / line["kept"]
    kept = torch.load(kept_path, weights_only=True)
    assert "joint-arrays" not in kept and {a["record"] for a in line["arrays"]} == {"arrays"}
    assert kept["arrays"]["w"].dtype == torch.float16  # the update as it left, not the fp32 weights
    assert kept["config"]["site"]["arrays-encoding"] == "fp16-update"
    assert kept["metrics"]["metrics"]["num-examples"] == 12
    audited = {(a["record"], a["key"]): a["sha256"] for a in line["arrays"]}
    for (record, key), sha in audited.items():
        assert hashlib.sha256(kept[record][key].numpy().tobytes()).hexdigest() == sha
    unpack_records(reply.content, str(reply.content["site"][PACKED_JSON]))  # as the server reads the wire
    assert hashlib.sha256(reply.content["arrays"]["w"].numpy().tobytes()).hexdigest() == audited[("arrays", "w")]
    assert stat.S_IMODE(kept_path.stat().st_mode) == 0o600


def test_the_audit_log_is_its_owners_alone(tmp_path):
    log = tmp_path / "state" / "audit.jsonl"
    log.parent.mkdir()
    log.write_text("", encoding="utf-8")
    log.chmod(0o644)  # an older log, world-readable
    as_the_site_runs(train_message(), context(tmp_path, keep_sent=False))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and len(audit_lines(tmp_path)) == 1
    fresh = tmp_path / "other"
    as_the_site_runs(train_message(), context(fresh, keep_sent=False))
    assert stat.S_IMODE((fresh / "state" / "audit.jsonl").stat().st_mode) == 0o600


def test_a_refused_apps_audit_line_is_written_0600(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps:\n  - {'a' * 64}\n", encoding="utf-8")
    check = approval_check("ankle", policy, tmp_path / "state", frozenset(), tmp_path / "apps", lambda *a, **k: None)
    with pytest.raises(AppNotApproved):
        check(b"another app")
    (line,) = audit_lines(tmp_path)
    assert line["type"] == "app" and line["fab_sha256"] == hashlib.sha256(b"another app").hexdigest()
    assert stat.S_IMODE((tmp_path / "state" / "audit.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_run_folder_name_that_is_not_digits_keeps_the_copy_in_the_flower_runs_folder(tmp_path):
    msg = train_message()
    msg.content["config"]["federation-run"] = "../../elsewhere"
    audit_mod(msg, context(tmp_path), lambda m, c: policy_mod(m, c, handler))
    (line,) = audit_lines(tmp_path)
    assert line["kept"] == "run-5/sent/round-003.wire.pt" and (tmp_path / "state" / line["kept"]).is_file()
