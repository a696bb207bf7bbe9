"""The site's audit log as a Flower mod, outermost around every handler but the packing of arrays: one line in
`STATE_DIR/audit.jsonl` (0600) per message that leaves the site, written before the reply goes: the run, the
round, the message type, the request that shaped the reply (the run configuration's values the site's policy
bounds, the message's config values, and sha256 digests of the whole run configuration and of the message's
config record: `pedseg_core.audit_request`), every array (record, key, shape, dtype, sha256 of its values) and
every metric and config value sent (bytes, such as SecAgg+'s keys and masked vectors, by size and sha256). An
array the site did not receive in the message it answers (by record, key and shape) with two dimensions of 32 or
more is marked `image_sized`; a reply whose result holds per-case metrics is marked `per_case`, and its number of
evaluation cases is kept (`cases`). With `--keep-sent` (node config keep-sent), the arrays, metrics and config
values of a reply that carries arrays are kept as they leave (after the policy, fp16 updates as fp16; the
packed form carries the same bytes): `run-<id>/sent/round-NNN.wire.pt`, each array's sha256 that of its audit
line. `pedseg audit STATE_DIR` reads the log back."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.node_settings import node_settings, site_config, state_dir
from pedseg_core.audit import AUDIT_FILE, append_line
from pedseg_core.audit_request import digest, request_values
from pedseg_core.private_dirs import make_private_dir
from pedseg_core.protocol import CONFIG, FEDERATION_RUN, RESULT_JSON, SERVER_ROUND, SITE, STAGE, STAGE_PRIOR
from pedseg_core.torch_files import save_atomically
from pedseg_core.train.private_store import RUN_FOLDER

IMAGE_SIDE = 32  # an array with two dimensions this large could hold an image or a label map
RUN_FOLDER_NAME = re.compile(r"[0-9]{1,24}")  # as client.app names the site algorithm's run folder


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    try:
        reply = call_next(msg, context)
    except Exception as err:  # Flower sends the error's text to the server: it leaves the site too
        _write(context, {**audit_line(msg, None, context), "error": f"{type(err).__name__}: {err}"})
        raise
    line = audit_line(msg, reply, context)
    if line.get("arrays") and node_settings(context).get("keep-sent"):
        line["kept"] = keep_sent(reply, line, state_dir(node_settings(context)))
    _write(context, line)
    return reply


def _write(context: Context, line: dict) -> None:
    append_line(make_private_dir(state_dir(node_settings(context))) / AUDIT_FILE, line)


def audit_line(msg: Message, reply: Message | None, context: Context) -> dict:
    """What `reply` (the answer to `msg`; None: the handler failed) carries out of the site, and the request
    that shaped it, as one JSON-able record."""
    config = msg.content[CONFIG] if CONFIG in msg.content.config_records else {}
    group = msg.metadata.group_id  # SecAgg+'s key-exchange stages carry no config: their round is the group id
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": context.run_id,
            "federation_run": str(config.get(FEDERATION_RUN, context.run_id)),
            "round": config.get(SERVER_ROUND, int(group) if group.isdigit() else None),
            "type": msg.metadata.message_type, "request": request(msg, context)}
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        line["secure_aggregation"] = True
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
    if RESULT_JSON in site:
        result = json.loads(str(site[RESULT_JSON]))
        line["cases"] = result.get("cases")
        if result.get("per_case"):
            line["per_case"] = True
    return line


def request(msg: Message, context: Context) -> dict:
    """The request behind the reply: the run configuration's bounded values (or why it could not be read), the
    message's config values, and the sha256 of each whole."""
    config = dict(msg.content[CONFIG].items()) if CONFIG in msg.content.config_records else {}
    found = {"run_config_sha256": digest(dict(context.run_config)), "message_config_sha256": digest(config),
             "message": {k: _loggable(v) for k, v in config.items()}}
    try:
        found["values"] = request_values(site_config(context))
    except Exception as err:  # a run config the site cannot parse: its handler refuses it; the log says why
        found["run_config_error"] = f"{type(err).__name__}: {err}"
    return found


def keep_sent(reply: Message, line: dict, state: Path) -> str:
    """The reply's arrays (by record, as they leave), metrics and config values into the run's `sent/` folder;
    returns the copy's path relative to `state`."""
    run = line["federation_run"] if RUN_FOLDER_NAME.fullmatch(line["federation_run"]) else str(line["run"])
    stage = "prior-" if line["request"]["message"].get(STAGE) == STAGE_PRIOR else ""
    number = line["round"] if isinstance(line["round"], int) and 0 <= line["round"] < 10 ** 6 else 0
    file_name = f"{stage}round-{number:03d}.wire.pt"
    folder = make_private_dir(make_private_dir(state / RUN_FOLDER.format(run=run)) / "sent")
    content = reply.content
    copy = {name: {key: torch.from_numpy(np.ascontiguousarray(array.numpy())) for key, array in record.items()}
            for name, record in content.array_records.items()}
    copy["metrics"] = {name: dict(record.items()) for name, record in content.metric_records.items()}
    copy["config"] = {name: dict(record.items()) for name, record in content.config_records.items()}
    save_atomically(folder / file_name, copy)
    return str((folder / file_name).relative_to(state))


def _loggable(value):
    """A config value as the log keeps it: bytes (SecAgg+'s keys, shares and masked vectors) by size and sha256."""
    if isinstance(value, bytes):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        hasher = hashlib.sha256()
        for item in value:
            hasher.update(item)
        return {"bytes": sum(len(item) for item in value), "items": len(value), "sha256": hasher.hexdigest()}
    return value
