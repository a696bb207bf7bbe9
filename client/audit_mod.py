"""The site's audit log as a Flower mod, outermost around every handler: one line in `STATE_DIR/audit.jsonl` per
message that leaves the site, written before the reply goes: the run, the round, the message type, every
array (record, key, shape, dtype, sha256 of its values) and every metric and config value sent (bytes, such as
SecAgg+'s keys and masked vectors, by size and sha256). An array the
site did not receive in the message it answers (by record, key and shape) with two dimensions of 32 or more is
marked `image_sized`; a reply whose result holds per-case metrics is marked `per_case`. `pedseg audit
STATE_DIR` reads it back."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.node_settings import node_settings, state_dir
from pedseg_core.audit import AUDIT_FILE
from pedseg_core.protocol import CONFIG, FEDERATION_RUN, RESULT_JSON, SERVER_ROUND, SITE

IMAGE_SIDE = 32  # an array with two dimensions this large could hold an image or a label map


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    try:
        reply = call_next(msg, context)
    except Exception as err:  # Flower sends the error's text to the server: it leaves the site too
        _write(context, {**audit_line(msg, None, context), "error": f"{type(err).__name__}: {err}"})
        raise
    _write(context, audit_line(msg, reply, context))
    return reply


def _write(context: Context, line: dict) -> None:
    path = state_dir(node_settings(context)) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(line, default=str) + "\n")


def audit_line(msg: Message, reply: Message | None, context: Context) -> dict:
    """What `reply` (the answer to `msg`; None: the handler failed) carries out of the site, as one JSON-able
    record."""
    config = msg.content[CONFIG] if CONFIG in msg.content.config_records else {}
    group = msg.metadata.group_id  # SecAgg+'s key-exchange stages carry no config: their round is the group id
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": context.run_id,
            "federation_run": str(config.get(FEDERATION_RUN, context.run_id)),
            "round": config.get(SERVER_ROUND, int(group) if group.isdigit() else None),
            "type": msg.metadata.message_type}
    if reply is None or reply.has_error():
        return {**line, "error": reply.error.reason} if reply is not None else line
    received = {(name, key, tuple(array.shape)) for name, record in msg.content.array_records.items()
                for key, array in record.items()}
    arrays = []
    for name, record in reply.content.array_records.items():
        for key, array in record.items():
            value = np.ascontiguousarray(array.numpy())
            entry = {"record": name, "key": key, "shape": list(value.shape), "dtype": str(value.dtype),
                     "sha256": hashlib.sha256(value).hexdigest()}  # a C-contiguous array: its bytes, uncopied
            if (name, key, tuple(value.shape)) not in received and sum(d >= IMAGE_SIDE for d in value.shape) >= 2:
                entry["image_sized"] = True
            arrays.append(entry)
    line["arrays"] = arrays
    line["metrics"] = {name: dict(record.items()) for name, record in reply.content.metric_records.items()}
    line["config"] = {name: {k: _loggable(v) for k, v in record.items()}
                      for name, record in reply.content.config_records.items()}
    site = reply.content[SITE] if SITE in reply.content.config_records else {}
    if RESULT_JSON in site and json.loads(str(site[RESULT_JSON])).get("per_case"):
        line["per_case"] = True
    return line


def _loggable(value):
    """A config value as the log keeps it: bytes (SecAgg+'s keys, shares and masked vectors) by size and sha256."""
    if isinstance(value, bytes):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        digest = hashlib.sha256()
        for item in value:
            digest.update(item)
        return {"bytes": sum(len(item) for item in value), "items": len(value), "sha256": digest.hexdigest()}
    return value
