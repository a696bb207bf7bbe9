"""The Flower ClientApp of a hospital site: a thin adapter around `pedseg_core.train.site.SiteTrainer`.

Node config (set by `pedseg-client`): site, joint, data-dir, state-dir, threads.
Replies carry only the shared arrays, `num-examples` and metrics (plus, when asked: the joint's prototypes, and
the head when other sites hold the same joint); the private layers stay in
`Context.state` and in `<state-dir>/run-<run id>/private.pt`, the site's Adam state in `optimizer.pt` beside,
and each evaluation leaves the personalized model it scored in `model.pt` (for `pedseg predict`).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pedseg_core.config import config_from_run_config
from pedseg_core.data.validate import require_valid_dataset
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss
from pedseg_core.train.private_store import PrivateStore
from pedseg_core.train.site import SiteTrainer

PRIVATE_KEY = "pedseg-private"
SEP = "|"  # prototype keys: "<joint>|<scale index>"

app = ClientApp()


def _node_settings(context: Context) -> dict:
    """This site's settings: the SuperNode's node config (set by pedseg-client), or in a Flower simulation,
    where a virtual node only knows its partition id, its entry in the run config's `sites-json` table."""
    if "site" in context.node_config:
        return dict(context.node_config)
    return json.loads(str(context.run_config["sites-json"]))[int(context.node_config["partition-id"])]


_CACHE: OrderedDict[tuple, tuple[SiteTrainer, PrivateStore]] = OrderedDict()


def _site(context: Context, config: ConfigRecord | None = None) -> tuple[SiteTrainer, PrivateStore]:
    """This site's trainer (validating the site's data) with its private layers and Adam state restored,
    preferring the node's memory (`Context.state`) over its disk. A process that serves several messages (a
    simulation actor) keeps its last `federation.cached_sites` trainers, with their slices and optimizer, in
    memory."""
    node = _node_settings(context)
    cfg = config_from_run_config(dict(context.run_config))
    cfg.train.num_threads = int(node.get("threads", cfg.train.num_threads))
    needs_union = cfg.scheme == "shared" and config is not None and "union-classes" in config
    union = _union(config, str(node["joint"])) if needs_union else None
    key = (context.run_id, str(node["site"]), union)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    site = SiteTrainer(str(node["site"]), str(node["joint"]), Path(str(node["data-dir"])), cfg,
                       (int(node.get("part", 0)), int(node.get("parts", 1))), union)
    state_dir = Path(str(node.get("state-dir") or Path(str(node["data-dir"])).parent / f".pedseg-{node['site']}"))
    store = PrivateStore(state_dir, str(context.run_id))
    if PRIVATE_KEY in context.state:
        site.load_private(context.state[PRIVATE_KEY].to_torch_state_dict())
    elif (private := store.load()) is not None:
        site.load_private(private)
    if (optimizer := store.load_optimizer()) is not None:
        site.load_optimizer_state(optimizer)
    _CACHE[key] = site, store
    while len(_CACHE) > cfg.federation.cached_sites:
        _CACHE.popitem(last=False)
    return site, store


def _union(config: ConfigRecord, joint: str) -> tuple[int, int]:
    """(number of union classes, this joint's offset) sent by the server (the shared scheme and the prior)."""
    return int(config["union-classes"]), int(json.loads(str(config["union-offsets-json"]))[joint])


def _identity(site: SiteTrainer) -> ConfigRecord:
    return ConfigRecord({"site": site.domain.name, "joint": site.domain.joint})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's joint and dataset.json labels (to build the union label space); no data leaves."""
    node = _node_settings(context)
    dataset = require_valid_dataset(Path(str(node["data-dir"])))
    identity = ConfigRecord({"site": str(node["site"]), "joint": str(node["joint"]),
                             "labels-json": json.dumps(dict(dataset.labels))})
    return Message(RecordDict({"site": identity}), reply_to=msg)


def train_prior(msg: Message, site: SiteTrainer) -> Message:
    """Stage 1 of `full`: one round of the shape auto-encoder on this site's masks (weights out, no data)."""
    config = msg.content["config"]
    classes, offset = _union(config, site.domain.joint)
    autoencoder = ShapeAutoEncoder(classes, site.cfg.prior.channels)
    autoencoder.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    slices, stats = site.train_prior_round(autoencoder, offset, int(config["server-round"]))
    metrics = MetricRecord({"num-examples": slices, **{k.replace("_", "-"): v for k, v in stats.items()}})
    return Message(RecordDict({"arrays": ArrayRecord(autoencoder.state_dict()), "metrics": metrics}), reply_to=msg)


def _prior_loss(msg: Message, site: SiteTrainer) -> ShapePriorLoss | None:
    if "prior" not in msg.content:
        return None
    classes, offset = _union(msg.content["config"], site.domain.joint)
    autoencoder = ShapeAutoEncoder(classes, site.cfg.prior.channels)
    autoencoder.load_state_dict(msg.content["prior"].to_torch_state_dict())
    return ShapePriorLoss(autoencoder, [offset], site.cfg.prior.weight)


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    config = msg.content["config"]
    if config.get("stage") == "prior":
        return train_prior(msg, _site(context)[0])
    site, store = _site(context, config)
    received = msg.content["arrays"].to_torch_state_dict()
    if "joint-arrays" in msg.content:  # the head pooled over this joint's sites (domain-wise aggregation)
        site.load_private(msg.content["joint-arrays"].to_torch_state_dict())
    identity = _identity(site)
    if config.get("evaluate-first"):  # the personalized model on the global weights of the previous round
        identity["result-json"] = json.dumps(_evaluate(site, store, received, int(config["server-round"]) - 1))
    shared, slices, stats = site.train_round(received, int(config["server-round"]), int(config["num-rounds"]),
                                             float(config.get("proximal-mu", 0.0)), _other_prototypes(msg, site),
                                             _prior_loss(msg, site))
    private = site.private_state()
    context.state[PRIVATE_KEY] = ArrayRecord(private)
    store.save(private)
    store.save_optimizer(site.optimizer_state())
    losses = {k.replace("_", "-"): v for k, v in stats.items() if k.endswith("_loss")}
    metrics = MetricRecord({"num-examples": slices, "train-loss": stats["loss"], **losses, "lr": stats["lr"],
                            "train-time-s": stats["train_time_s"], "load-time-s": stats["load_time_s"]})
    reply = RecordDict({"arrays": ArrayRecord(shared), "metrics": metrics, "site": identity})
    server_round = int(config["server-round"])
    if site.cfg.contrastive.share_prototypes and (prototypes := site.prototypes(server_round)) is not None:
        means, count = prototypes
        reply["prototypes"] = ArrayRecord({f"{site.domain.joint}{SEP}{s}": m for s, m in enumerate(means)})
        metrics["prototype-slices"] = count
    if config.get("share-head"):
        reply["joint-arrays"] = ArrayRecord(site.head_state())
    if _node_settings(context).get("keep-sent"):
        sent = {name: record.to_torch_state_dict() for name, record in reply.array_records.items()}
        store.save_sent(int(config["server-round"]), sent, slices)
    metrics["client-time-s"] = time.perf_counter() - started  # all of this handler, for overhead accounting
    return Message(reply, reply_to=msg)


def _other_prototypes(msg: Message, site: SiteTrainer) -> list[torch.Tensor] | None:
    """The other joints' prototypes the server sent ("<joint>|<scale>" -> [D]), as one [M, D] per scale."""
    if "prototypes" not in msg.content:
        return None
    arrays = msg.content["prototypes"].to_torch_state_dict()
    joints = sorted({k.split(SEP)[0] for k in arrays} - {site.domain.joint})
    if not joints:
        return None
    return [torch.stack([arrays[f"{j}{SEP}{s}"] for j in joints]) for s in range(len(site.model.scales))]


def _evaluate(site: SiteTrainer, store: PrivateStore, shared: dict[str, torch.Tensor], server_round: int) -> dict:
    """The site's evaluation of its personalized model on the global weights of `server_round`; the model it
    scored is kept at the site as `model.pt` (the shared scheme has none: its head is the union of all bones)."""
    result = site.evaluate(shared)
    if not site.union:
        site.save_model(store.model_path, server_round)
    return result


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    site, store = _site(context, config)
    result = _evaluate(site, store, msg.content["arrays"].to_torch_state_dict(), int(config["server-round"]))
    metrics = MetricRecord({"num-examples": result["cases"], "mean-dice": result["mean_dice"] or 0.0})
    identity = _identity(site)
    identity["result-json"] = json.dumps(result)
    return Message(RecordDict({"metrics": metrics, "site": identity}), reply_to=msg)
