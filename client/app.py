"""The Flower ClientApp of a hospital site: it translates Flower messages into the typed requests of the site
algorithm (`pedseg_core.train.site_algorithm`, which trains, keeps the site's private state and decides what
leaves) and its results back into records, named as in `pedseg_core.protocol`.

Node config (set by `pedseg-client`): site, joint, data-dir, state-dir, threads, keep-sent, policy (see
`client.node_settings`). Three mods wrap every handler: the packed arrays unpacked (outermost), the site's audit
log and its privacy policy; training also goes through `client.message_dtype_mod` (fp16 on the wire when the run
asks for it) and SecAgg+ (`client.secure_aggregation_mod`) when the run uses secure aggregation. The private
layers stay in `Context.state` (PRIVATE_KEY) and in `<state-dir>/run-<run id>/` (the run id the server names in
`federation-run`: a resumed run's is that of the run it continues).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit_mod import audit_mod
from client.message_dtype_mod import message_dtype_mod
from client.node_settings import node_settings, site_config, site_settings
from client.packed_arrays_mod import packed_arrays_mod
from client.policy_mod import policy_mod
from client.secure_aggregation_mod import secure_aggregation_mod
from pedseg_core.data.validate import require_valid_dataset
from pedseg_core.protocol import (
    ARRAYS,
    CONFIG,
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
    PROTOTYPES,
    PROXIMAL_MU,
    REFUSALS_JSON,
    RESULT_JSON,
    SERVER_ROUND,
    SHARE_HEAD,
    SITE,
    SITE_NAME,
    STAGE,
    STAGE_PRIOR,
    UNION_CLASSES,
    UNION_OFFSETS_JSON,
)
from pedseg_core.train.site_algorithm import SiteAlgorithm
from pedseg_core.train.site_algorithm_cache import SiteAlgorithmCache
from pedseg_core.train.site_requests import (
    EvaluateRequest,
    EvaluateResult,
    PriorRequest,
    StateDict,
    TrainRequest,
    UnionLabels,
)

PRIVATE_KEY = "pedseg-private"
SEQUENCE_KEY = "pedseg-sequence"  # how many messages this node has handled: a cached algorithm must have seen them all
RUN_ID = re.compile(r"[0-9]{1,24}")

# outermost, the arrays unpacked; then the audit log, which sees exactly what the policy lets leave
app = ClientApp(mods=[packed_arrays_mod, audit_mod, policy_mod])
ALGORITHMS = SiteAlgorithmCache()  # this process's, across messages


def site_algorithm(context: Context, config: ConfigRecord | None = None) -> SiteAlgorithm:
    """This node's site algorithm for this message (see `SiteAlgorithmCache`), restored from the node's memory
    (`Context.state`) or its disk when this process's copy is not current."""
    union = _union(config, context) if config is not None and UNION_CLASSES in config else None
    named = str(config.get(FEDERATION_RUN, "")) if config is not None else ""
    run = named if RUN_ID.fullmatch(named) else str(context.run_id)  # it names a folder: digits only
    handled = int(context.state[SEQUENCE_KEY]["messages"]) if SEQUENCE_KEY in context.state.config_records else 0
    context.state[SEQUENCE_KEY] = ConfigRecord({"messages": handled + 1})
    private = context.state[PRIVATE_KEY].to_torch_state_dict() if PRIVATE_KEY in context.state else None
    return ALGORITHMS.open(site_settings(node_settings(context)), site_config(context), run, union, handled, private)


def _union(config: ConfigRecord, context: Context) -> UnionLabels:
    joint = str(node_settings(context)["joint"])
    return UnionLabels.of(int(config[UNION_CLASSES]), str(config[UNION_OFFSETS_JSON]), joint)


def _arrays(msg: Message, name: str) -> StateDict | None:
    return msg.content[name].to_torch_state_dict() if name in msg.content else None


def _identity(context: Context) -> ConfigRecord:
    node = node_settings(context)
    return ConfigRecord({SITE_NAME: str(node["site"]), JOINT: str(node["joint"])})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's joint and dataset.json labels (to build the union label space); no data leaves."""
    dataset = require_valid_dataset(Path(str(node_settings(context)["data-dir"])))
    identity = _identity(context)
    identity[LABELS_JSON] = json.dumps(dict(dataset.labels))
    return Message(RecordDict({SITE: identity}), reply_to=msg)


@app.train(mods=[message_dtype_mod, secure_aggregation_mod])  # fp16 on the wire; SecAgg+ masks when used
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    config = msg.content[CONFIG]
    algorithm = site_algorithm(context, config)
    if config.get(STAGE) == STAGE_PRIOR:
        request = PriorRequest(_arrays(msg, ARRAYS), int(config[SERVER_ROUND]), _union(config, context))
        prior = algorithm.train_prior(request)
        metrics = MetricRecord({NUM_EXAMPLES: prior.num_examples, **prior.metrics})
        return Message(RecordDict({ARRAYS: ArrayRecord(prior.autoencoder), METRICS: metrics}), reply_to=msg)
    result = algorithm.train(TrainRequest(
        shared=_arrays(msg, ARRAYS), server_round=int(config[SERVER_ROUND]), num_rounds=int(config[NUM_ROUNDS]),
        proximal_mu=float(config.get(PROXIMAL_MU, 0.0)), prototypes=_arrays(msg, PROTOTYPES) or {},
        head=_arrays(msg, HEAD), prior=_arrays(msg, PRIOR),
        union=_union(config, context) if UNION_CLASSES in config else None,
        evaluate_first=bool(config.get(EVALUATE_FIRST)), share_head=bool(config.get(SHARE_HEAD))))
    context.state[PRIVATE_KEY] = ArrayRecord(algorithm.private_state())
    identity = _identity(context)
    if result.evaluation is not None:
        _add_evaluation(identity, result.evaluation)
    metrics = MetricRecord({NUM_EXAMPLES: result.num_examples, **result.metrics})
    reply = RecordDict({ARRAYS: ArrayRecord(result.shared), METRICS: metrics, SITE: identity})
    for name, arrays in ((PROTOTYPES, result.prototypes), (HEAD, result.head)):
        if arrays is not None:
            reply[name] = ArrayRecord(arrays)
    metrics["client-time-s"] = time.perf_counter() - started  # all of this handler, for overhead accounting
    return Message(reply, reply_to=msg)


@app.evaluate(mods=[message_dtype_mod])
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    result = site_algorithm(context, config).evaluate(EvaluateRequest(_arrays(msg, ARRAYS), int(config[SERVER_ROUND])))
    identity = _identity(context)
    _add_evaluation(identity, result)
    if result.entry is None:  # no metric leaves: the site record says why
        return Message(RecordDict({SITE: identity}), reply_to=msg)
    metrics = MetricRecord({NUM_EXAMPLES: result.num_examples, MEAN_DICE: result.mean_dice})
    return Message(RecordDict({METRICS: metrics, SITE: identity}), reply_to=msg)


def _add_evaluation(identity: ConfigRecord, result: EvaluateResult) -> None:
    """The site's evaluation result into its site record, or, when its policy withholds it, why (REFUSALS_JSON,
    as the policy mod's refusals)."""
    if result.entry is not None:
        identity[RESULT_JSON] = json.dumps(result.entry)
    else:
        identity[REFUSALS_JSON] = json.dumps([result.withheld])
