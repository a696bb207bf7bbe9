"""The Flower ClientApp of a hospital site: a thin adapter around `pedseg_core.train.site.SiteTrainer`.

Node config (set by `pedseg-client`): site, joint, data-dir, state-dir, threads, keep-sent, policy (see
`client.node_settings`). Three mods wrap every handler: the packed arrays unpacked (outermost), the site's audit
log and its privacy policy;
training also goes through `client.message_dtype_mod` (fp16 on the wire when the run asks for it) and SecAgg+
(`client.secure_aggregation_mod`) when the run uses secure aggregation.
Replies carry only the shared arrays, `num-examples` and metrics (plus, when asked and allowed: the joint's
prototypes, and the head when other sites hold the same joint); a site whose policy asks for DP trains with
DP-SGD and keeps its accountant in `privacy.pt`; the private layers stay in
`Context.state` and in `<state-dir>/run-<run id>/private.pt` (the run id the server names in `federation-run`:
a resumed run's is that of the run it continues), the site's Adam state in `optimizer.pt` beside,
and each evaluation leaves the personalized model it scored in `model.pt` (for `pedseg predict`).
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit_mod import audit_mod
from client.message_dtype_mod import message_dtype_mod
from client.node_settings import node_settings, site_policy, state_dir
from client.packed_arrays_mod import packed_arrays_mod
from client.policy_mod import policy_mod
from client.secure_aggregation_mod import secure_aggregation_mod
from flower_common.run_config import config_from_run_config
from pedseg_core.data.validate import require_valid_dataset
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss
from pedseg_core.policy import DPBudget
from pedseg_core.protocol import (
    ARRAYS,
    CONFIG,
    EPSILON,
    EVALUATE_FIRST,
    FEDERATION_RUN,
    HEAD,
    JOINT,
    LABELS_JSON,
    MEAN_DICE,
    METRICS,
    NUM_EXAMPLES,
    NUM_ROUNDS,
    PRIOR,
    PROTOTYPE_SEP,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    PROXIMAL_MU,
    RESULT_JSON,
    SERVER_ROUND,
    SHARE_HEAD,
    SITE,
    SITE_NAME,
    STAGE,
    STAGE_PRIOR,
    TRAIN_LOSS,
    UNION_CLASSES,
    UNION_OFFSETS_JSON,
)
from pedseg_core.train.private_store import PrivateStore
from pedseg_core.train.private_training import spent_epsilon
from pedseg_core.train.site import SiteTrainer

PRIVATE_KEY = "pedseg-private"
SEQUENCE_KEY = "pedseg-sequence"  # how many messages this node has handled: a cached trainer must have seen them all
RUN_ID = re.compile(r"[0-9]{1,24}")

# outermost, the arrays unpacked; then the audit log, which sees exactly what the policy lets leave
app = ClientApp(mods=[packed_arrays_mod, audit_mod, policy_mod])


_CACHE: OrderedDict[tuple, tuple[SiteTrainer, PrivateStore, int]] = OrderedDict()


def _site(context: Context, config: ConfigRecord | None = None) -> tuple[SiteTrainer, PrivateStore]:
    """This site's trainer (validating the site's data) with its private layers, Adam state and DP accountant
    restored, preferring the node's memory (`Context.state`) over its disk. A process that serves several
    messages (a simulation actor) keeps its last `federation.cached_sites` trainers, with their slices and
    optimizer, in memory, and uses one only if it handled this node's previous message: the simulation engine
    hands a node's messages to any of its actors, and another actor's trainer would hold an older state of the
    site (its private layers, its Adam state and the epsilon it has spent)."""
    node = node_settings(context)
    cfg = config_from_run_config(dict(context.run_config))
    cfg.train.num_threads = int(node.get("threads", cfg.train.num_threads))
    needs_union = cfg.scheme == "shared" and config is not None and UNION_CLASSES in config
    union = _union(config, str(node["joint"])) if needs_union else None
    named = str(config.get(FEDERATION_RUN, "")) if config is not None else ""
    run = named if RUN_ID.fullmatch(named) else str(context.run_id)  # it names a folder: digits only
    key = (run, str(node["site"]), union)
    handled = int(context.state[SEQUENCE_KEY]["messages"]) if SEQUENCE_KEY in context.state.config_records else 0
    context.state[SEQUENCE_KEY] = ConfigRecord({"messages": handled + 1})
    if key in _CACHE and _CACHE[key][2] == handled:
        site, store, _ = _CACHE[key]
        _CACHE[key] = site, store, handled + 1
        _CACHE.move_to_end(key)
        return site, store
    site = SiteTrainer(str(node["site"]), str(node["joint"]), Path(str(node["data-dir"])), cfg,
                       (int(node.get("part", 0)), int(node.get("parts", 1))), union)
    store = PrivateStore(state_dir(node), run)  # a resumed run keeps the private layers of the run it continues
    if PRIVATE_KEY in context.state:
        site.load_private(context.state[PRIVATE_KEY].to_torch_state_dict())
    elif (private := store.load()) is not None:
        site.load_private(private)
    if (optimizer := store.load_optimizer()) is not None:
        site.load_optimizer_state(optimizer)
    _CACHE[key] = site, store, handled + 1
    while len(_CACHE) > cfg.federation.cached_sites:
        _CACHE.popitem(last=False)
    return site, store


def _union(config: ConfigRecord, joint: str) -> tuple[int, int]:
    """(number of union classes, this joint's offset) sent by the server (the shared scheme and the prior)."""
    return int(config[UNION_CLASSES]), int(json.loads(str(config[UNION_OFFSETS_JSON]))[joint])


def _identity(site: SiteTrainer) -> ConfigRecord:
    return ConfigRecord({SITE_NAME: site.domain.name, JOINT: site.domain.joint})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's joint and dataset.json labels (to build the union label space); no data leaves."""
    node = node_settings(context)
    dataset = require_valid_dataset(Path(str(node["data-dir"])))
    identity = ConfigRecord({SITE_NAME: str(node["site"]), JOINT: str(node["joint"]),
                             LABELS_JSON: json.dumps(dict(dataset.labels))})
    return Message(RecordDict({SITE: identity}), reply_to=msg)


def train_prior(msg: Message, site: SiteTrainer, store: PrivateStore, budget: DPBudget | None) -> Message:
    """Stage 1 of `full`: one round of the shape auto-encoder on this site's masks (weights out, no data); with
    a DP `budget`, by DP-SGD on the site's accountant (its reply then carries no losses: DP does not cover them)."""
    config = msg.content[CONFIG]
    classes, offset = _union(config, site.domain.joint)
    autoencoder = ShapeAutoEncoder(classes, site.cfg.prior.channels)
    autoencoder.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    slices, stats, privacy = site.train_prior_round(autoencoder, offset, int(config[SERVER_ROUND]), budget,
                                                    store.load_privacy() if budget else None)
    if privacy is not None:
        store.save_privacy(privacy)
        stats = {}
    metrics = MetricRecord({NUM_EXAMPLES: slices, **{k.replace("_", "-"): v for k, v in stats.items()}})
    return Message(RecordDict({ARRAYS: ArrayRecord(autoencoder.state_dict()), METRICS: metrics}), reply_to=msg)


def _prior_loss(msg: Message, site: SiteTrainer) -> ShapePriorLoss | None:
    if PRIOR not in msg.content:
        return None
    classes, offset = _union(msg.content[CONFIG], site.domain.joint)
    autoencoder = ShapeAutoEncoder(classes, site.cfg.prior.channels)
    autoencoder.load_state_dict(msg.content[PRIOR].to_torch_state_dict())
    return ShapePriorLoss(autoencoder, [offset], site.cfg.prior.weight)


@app.train(mods=[message_dtype_mod, secure_aggregation_mod])  # fp16 on the wire; SecAgg+ masks when used
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    config = msg.content[CONFIG]
    policy = site_policy(node_settings(context))
    site, store = _site(context, config)
    if config.get(STAGE) == STAGE_PRIOR:
        return train_prior(msg, site, store, policy.dp)
    if policy.dp is not None:  # DP-SGD with the accountant this site kept from its earlier rounds
        site.use_privacy(policy.dp, int(config[NUM_ROUNDS]), store.load_privacy())
    received = msg.content[ARRAYS].to_torch_state_dict()
    if HEAD in msg.content:  # the head pooled over this joint's sites (domain-wise aggregation)
        site.load_private(msg.content[HEAD].to_torch_state_dict())
    identity = _identity(site)
    server_round = int(config[SERVER_ROUND])
    if config.get(EVALUATE_FIRST):  # the personalized model on the global weights of the previous round
        identity[RESULT_JSON] = json.dumps(_evaluate(site, store, received, server_round - 1))
    shared, slices, stats = site.train_round(received, server_round, int(config[NUM_ROUNDS]),
                                             float(config.get(PROXIMAL_MU, 0.0)), _other_prototypes(msg, site),
                                             _prior_loss(msg, site))
    private = site.private_state()
    context.state[PRIVATE_KEY] = ArrayRecord(private)
    store.save(private)
    store.save_optimizer(site.optimizer_state())
    metrics = MetricRecord({NUM_EXAMPLES: slices, "lr": stats["lr"], "train-time-s": stats["train_time_s"],
                            "load-time-s": stats["load_time_s"]})
    if site.private is not None:  # the losses depend on the training data and DP does not cover them
        store.save_privacy(site.private.state_dict())
        metrics[EPSILON] = stats["epsilon"]
    else:
        metrics[TRAIN_LOSS] = stats["loss"]
        metrics.update({k.replace("_", "-"): v for k, v in stats.items() if k.endswith("_loss")})
    reply = RecordDict({ARRAYS: ArrayRecord(shared), METRICS: metrics, SITE: identity})
    if site.cfg.contrastive.share_prototypes and site.private is None and \
            (prototypes := site.prototypes(server_round)) is not None:
        means, count = prototypes
        reply[PROTOTYPES] = ArrayRecord({f"{site.domain.joint}{PROTOTYPE_SEP}{s}": m for s, m in enumerate(means)})
        metrics[PROTOTYPE_SLICES] = count
    if config.get(SHARE_HEAD):
        reply[HEAD] = ArrayRecord(site.head_state())
    if node_settings(context).get("keep-sent"):
        sent = {name: record.to_torch_state_dict() for name, record in reply.array_records.items()}
        store.save_sent(server_round, sent, slices)
    metrics["client-time-s"] = time.perf_counter() - started  # all of this handler, for overhead accounting
    return Message(reply, reply_to=msg)


def _other_prototypes(msg: Message, site: SiteTrainer) -> list[torch.Tensor] | None:
    """The other joints' prototypes the server sent ("<joint>|<scale>" -> [D]), as one [M, D] per scale."""
    if PROTOTYPES not in msg.content:
        return None
    arrays = msg.content[PROTOTYPES].to_torch_state_dict()
    joints = sorted({k.split(PROTOTYPE_SEP)[0] for k in arrays} - {site.domain.joint})
    if not joints:
        return None
    return [torch.stack([arrays[f"{j}{PROTOTYPE_SEP}{s}"] for j in joints]) for s in range(len(site.model.scales))]


def _evaluate(site: SiteTrainer, store: PrivateStore, shared: dict[str, torch.Tensor], server_round: int) -> dict:
    """The site's evaluation of its personalized model on the global weights of `server_round`; the model it
    scored is kept at the site as `model.pt` (the shared scheme has none: its head is the union of all bones)."""
    result = site.evaluate(shared)
    if not site.union:
        site.save_model(store.model_path, server_round)
    if (privacy := store.load_privacy()) is not None:  # a DP site reports what it spent so far
        result["epsilon"] = spent_epsilon(privacy)
    return result


@app.evaluate(mods=[message_dtype_mod])
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    site, store = _site(context, config)
    result = _evaluate(site, store, msg.content[ARRAYS].to_torch_state_dict(), int(config[SERVER_ROUND]))
    metrics = MetricRecord({NUM_EXAMPLES: result["cases"], MEAN_DICE: result["mean_dice"] or 0.0})
    identity = _identity(site)
    identity[RESULT_JSON] = json.dumps(result)
    return Message(RecordDict({METRICS: metrics, SITE: identity}), reply_to=msg)
