"""Packed arrays from the server's wire through a site's outermost mod and back: the handler sees every array as
the server had it, a message is a few Flower objects instead of one per tensor, and a reply whose packing does
not match its index is rejected by the update checks, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.message_dtype_mod import message_dtype_mod
from client.packed_arrays_mod import packed_arrays_mod
from pedseg_core.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PACKED_JSON, PRIOR, SITE
from server.update_checks import UpdateChecks
from server.wire import Wire

rng = np.random.default_rng(0)
GLOBAL = ArrayRecord({**{f"enc.{i}.weight": Array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32))
                         for i in range(30)}, "dec.steps": Array(np.array(7, np.int64))})


def message(content: RecordDict) -> Message:
    metadata = Metadata(run_id=5, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="2", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def sent_by(wire: Wire) -> Message:
    config = ConfigRecord({"server-round": 2})
    wire.prepare(GLOBAL, None, config)
    records, packed = wire.records((ARRAYS, PRIOR))
    return message(RecordDict({**records, CONFIG: ConfigRecord({**dict(config.items()), **packed})}))


def trained(arrays: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({k: Array(v.numpy() + np.asarray(1e-3, v.numpy().dtype) if v.numpy().dtype.kind == "f"
                                 else v.numpy()) for k, v in arrays.items()})


@pytest.mark.parametrize("fp16", [False, True])
def test_the_handler_sees_every_array_and_the_server_gets_the_reply_back_whole(fp16, tmp_path):
    msg = sent_by(Wire(fp16=fp16, pack=True))
    assert list(msg.content[ARRAYS].keys()) == ["packed"]
    unpacked_count = len(get_all_nested_objects(sent_by(Wire(fp16=fp16, pack=False))))
    assert len(get_all_nested_objects(msg)) < unpacked_count / 4  # 31 arrays: one object each, and a chunk each
    seen = {}

    def handler(m: Message, ctx: Context) -> Message:
        seen["arrays"] = {k: v.numpy() for k, v in m.content[ARRAYS].items()}
        seen["config"] = dict(m.content[CONFIG].items())
        reply = RecordDict({ARRAYS: trained(m.content[ARRAYS]), SITE: ConfigRecord({"site": "a", "joint": "ankle"})})
        return Message(reply, reply_to=m)

    wire = Wire(fp16=fp16, pack=True)
    reply = packed_arrays_mod(sent_by(wire), Context(5, 1, {}, RecordDict(), {}), handler)
    assert PACKED_JSON not in seen["config"]
    for key, value in GLOBAL.items():
        expected = value.numpy().astype(np.float16) if fp16 and value.numpy().dtype.kind == "f" else value.numpy()
        assert seen["arrays"][key].dtype == expected.dtype and np.array_equal(seen["arrays"][key], expected)
    assert list(reply.content[ARRAYS].keys()) == ["packed"] and reply.content[SITE][PACKED_JSON]
    back = wire.decoded(reply).content[ARRAYS]
    assert wire.decoded(reply).content[ARRAYS] is back  # decoded as it arrived, and again to aggregate: once
    assert list(back.keys()) == list(GLOBAL.keys())
    for key, value in trained(ArrayRecord({k: Array(v) for k, v in seen["arrays"].items()})).items():
        assert np.array_equal(back[key].numpy(), value.numpy())


@pytest.mark.parametrize("pack", [False, True])
def test_a_reply_decoded_as_it_arrives_is_not_decoded_again_to_aggregate(pack):
    def handler(m: Message, ctx: Context) -> Message:
        return Message(RecordDict({ARRAYS: trained(m.content[ARRAYS]),
                                   SITE: ConfigRecord({"site": "a", "joint": "ankle"})}), reply_to=m)

    wire = Wire(fp16=True, pack=pack)
    reply = packed_arrays_mod(sent_by(wire), Context(5, 1, {}, RecordDict(), {}),
                              lambda m, ctx: message_dtype_mod(m, ctx, handler))
    decoded = wire.decoded(reply).content[ARRAYS]
    assert wire.decoded(reply).content[ARRAYS] is decoded  # the second call does no work (49 MB in the demo)
    for key, value in GLOBAL.items():  # the rounded global + the update: the site's weights, to fp16's precision
        assert np.allclose(decoded[key].numpy(), trained(ArrayRecord({key: value}))[key].numpy(), atol=2e-3)


def test_a_reply_whose_packing_does_not_match_its_index_is_rejected_not_a_crash():
    wire = Wire(fp16=False, pack=True)
    msg = sent_by(wire)
    forged = json.loads(str(msg.content[CONFIG][PACKED_JSON]))
    forged[ARRAYS][0][2] = [999, 999]  # the first array claims more bytes than the buffer holds
    reply = message(RecordDict({ARRAYS: msg.content[ARRAYS], METRICS: MetricRecord({NUM_EXAMPLES: 12}),
                                SITE: ConfigRecord({"site": "a", "joint": "ankle", PACKED_JSON: json.dumps(forged)})}))
    decoded = wire.decoded(reply)
    valid, rejected, _ = UpdateChecks(10.0).screen([decoded], GLOBAL, {}, {})
    assert not valid and "packed" in rejected[0][1]
