"""A ClientApp for fault tests: pedseg's own, except that the site named by the run config's `corrupt-site`
corrupts its training reply in round r as `corruptions-json` ({"r": kind}) says. Run as its own Flower app
(see `corrupting_app_dir` in test_update_checks_e2e.py); every other site behaves."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client import app as pedseg
from client.node_settings import node_settings
from client.packed_arrays_mod import packed_arrays_mod

app = ClientApp(mods=[packed_arrays_mod])  # corrupts the reply unpacked, as a site's code would


def _corrupt(reply: Message, received: ArrayRecord, kind: str, private_key: str) -> None:
    arrays = reply.content["arrays"]
    first = min(arrays.keys())
    if kind == "nan":
        value = arrays[first].numpy().copy()
        value.flat[0] = np.nan
        arrays[first] = Array(value)
    elif kind == "shape":
        arrays[first] = Array(arrays[first].numpy().reshape(-1))
    elif kind == "list-metric":  # a list where the server expects a number
        reply.content["metrics"]["num-examples"] = [float(reply.content["metrics"]["num-examples"])] * 2
    elif kind == "foreign":  # a private layer (this site's first norm tensor) slipped into the shared arrays
        arrays[private_key] = Array(np.ones(3, np.float32))
    elif kind == "scale":  # the update blown up a million times: absurd, not merely over the norm bound
        for key in arrays.keys():
            sent, base = arrays[key].numpy(), received[key].numpy()
            arrays[key] = Array((base + 1e6 * (sent - base)).astype(sent.dtype))
    elif kind == "no-site":
        del reply.content["site"]


@app.query()
def query(msg: Message, context: Context) -> Message:
    return pedseg.query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    received = ArrayRecord({k: v for k, v in msg.content["arrays"].items()})
    reply = pedseg.train(msg, context)
    site = node_settings(context)["site"]
    kind = json.loads(str(context.run_config["corruptions-json"] or "{}")).get(
        str(msg.content["config"]["server-round"]))
    if kind and site == context.run_config["corrupt-site"]:
        _corrupt(reply, received, kind, min(context.state[pedseg.PRIVATE_KEY].keys()))  # the private layers just kept
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return pedseg.evaluate(msg, context)
