"""Every reply is checked before it counts; one that fails is dropped whole, with its reason, and never ends
the run: every value's type is checked before it is used.

A training reply must carry its site's identity (site and joint names that are strings under
`pedseg_core.names`' rule); exactly the keys of the global shared weights, each of the global shape and dtype,
with finite values; metrics under plain names (at most MAX_METRICS), each a finite number, with a positive
`num-examples`;
prototypes only of its own joint, one finite vector per scale; a head (when sent) of the keys, shapes and dtypes
of its joint's pooled head. A stage-1 (prior) reply has no site record and is named by its node.

Then the sizes: the L2 norm of a reply's update (its shared weights minus the global ones; a head minus its
joint's pooled head, or its own norm before one exists) against the median norm of the round's OTHER checked
replies (of the same joint, for heads): over `norm_bound` x that median, the update is clipped to it (and the
round's line says so); non-finite or over ABSURD x the median, the reply is rejected. A round with a single
reply has nothing to compare with, except a lone head of a joint with a pooled head: it is bounded by the
pooled head's own norm (no single site may replace its joint's head with an arbitrary one). Each update then
weighs `min(declared num-examples, expected)`, where the server knows what a round's local training can see
(`training_examples`, `prior_examples`): a site cannot outweigh the others by declaring more. The reasons go
to the round's metrics.jsonl line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from pedseg_core.config import PedsegConfig
from pedseg_core.names import NAME
from pedseg_core.protocol import (
    ARRAYS,
    HEAD,
    JOINT,
    METRICS,
    NUM_EXAMPLES,
    PROTOTYPE_SEP,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    REFUSALS_JSON,
    RESULT_JSON,
    SITE,
    SITE_NAME,
)

METRIC_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # num-examples, train-loss, epsilon, client-time-s, ...
MAX_METRICS = 32  # a site sends about ten; the server reads only num-examples, train-loss and prototype-slices
ABSURD = 1000.0  # an update this many times the median of the others' is rejected, not clipped
EVALUATION_METRICS = ("dice", "hd95", "assd")


def training_examples(cfg: PedsegConfig) -> int:
    """The most slices a site's training round sees: its local steps x batch (`SiteTrainer.train_round`)."""
    return cfg.train.steps_per_epoch * cfg.train.batch_size


def prior_examples(cfg: PedsegConfig) -> int:
    """The most slices a stage-1 round sees: the prior's steps x the larger batch (the prior's; DP-SGD samples
    batches of train.batch_size)."""
    return cfg.prior.steps_per_epoch * max(cfg.prior.batch_size, cfg.train.batch_size)


class UpdateRejected(Exception):
    """A reply that does not count; the message says why, in a few words."""


def _names(keys: set[str]) -> str:
    listed = ", ".join(sorted(keys)[:3])
    return f"{listed}, ... ({len(keys)})" if len(keys) > 3 else listed


def _shown(value: object) -> str:
    """A value a site sent, short enough for a log line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_identity(reply: Message) -> tuple[str, str]:
    """(site, joint) of a reply whose site record names them validly, its other entries strings."""
    if SITE not in reply.content.config_records:
        raise UpdateRejected("no site record")
    record = reply.content[SITE]
    names = []
    for key, kind in ((SITE_NAME, "site"), (JOINT, "joint")):
        value = record.get(key)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise UpdateRejected(f"{kind} name {_shown(value)}: expected a string of letters, digits, '.', '_' "
                                 "and '-'")
        names.append(value)
    for key in (RESULT_JSON, REFUSALS_JSON):
        if key in record and not isinstance(record[key], str):
            raise UpdateRejected(f"site record: {key} is {type(record[key]).__name__}, not a string")
    return names[0], names[1]


def check_arrays(record: ArrayRecord, reference: dict[str, Array], what: str) -> dict[str, np.ndarray]:
    """The record's arrays as numpy, if they are exactly `reference`'s keys, shapes and dtypes, all finite."""
    keys, expected = set(record.keys()), set(reference)
    if keys - expected:
        raise UpdateRejected(f"{what}: keys that are not {what}: {_names(keys - expected)}")
    if expected - keys:
        raise UpdateRejected(f"{what}: missing keys: {_names(expected - keys)}")
    arrays = {}
    for key in sorted(keys):
        sent, ref = record[key], reference[key]
        if list(sent.shape) != list(ref.shape) or sent.dtype != ref.dtype:
            raise UpdateRejected(f"{what}: {key} is {sent.dtype}{list(sent.shape)}, "
                                 f"expected {ref.dtype}{list(ref.shape)}")
        try:
            value = sent.numpy()
        except Exception as err:  # noqa: BLE001 - any undecodable array is a rejected reply
            raise UpdateRejected(f"{what}: {key} cannot be read: {err}") from None
        if value.shape != tuple(ref.shape) or str(value.dtype) != ref.dtype:  # what the bytes hold, not the label
            raise UpdateRejected(f"{what}: {key} holds {value.dtype}{list(value.shape)}, not what it declares")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise UpdateRejected(f"{what}: {key} holds non-finite values")
        arrays[key] = value
    return arrays


def _norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """||arrays - reference||, each array in its own precision (float32 weights: ~1e-5 relative, ample for a
    norm bound), integer arrays (BatchNorm's step counts) in float64; an overflow is inf, beyond any bound."""
    total = 0.0
    for key, value in arrays.items():
        ref = reference[key]
        if not np.issubdtype(value.dtype, np.floating):
            value, ref = value.astype(np.float64), ref.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            difference = (value - ref).reshape(-1)
            total += float(np.dot(difference, difference))
    return math.sqrt(total)


def in_dtype(value: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """`value` as `dtype` (integers rounded to the nearest, not truncated)."""
    target = np.dtype(dtype)
    return np.asarray(np.rint(value) if np.issubdtype(target, np.integer) else value).astype(target)


def _clipped(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray], scale: float) -> ArrayRecord:
    """reference + scale x (arrays - reference), in the arrays' dtypes."""
    return ArrayRecord({key: Array(in_dtype(reference[key].astype(np.float64) + scale * (
        value.astype(np.float64) - reference[key].astype(np.float64)), value.dtype)) for key, value in arrays.items()})


def check_metrics(reply: Message) -> float:
    """The reply's `num-examples`, if every metric has a plain name (at most MAX_METRICS of them) and is a finite
    number, and the count is positive."""
    if METRICS not in reply.content.metric_records:
        raise UpdateRejected("no metrics record")
    metrics = reply.content[METRICS]
    if len(metrics) > MAX_METRICS:
        raise UpdateRejected(f"{len(metrics)} metrics, more than the {MAX_METRICS} a site may send")
    for key, value in metrics.items():
        if len(key) > 40 or not METRIC_NAME.fullmatch(key):
            raise UpdateRejected(f"metric {_shown(key)} is not a metric name (a-z, 0-9 and '-')")
        if not isinstance(value, (int, float)):  # a MetricRecord also holds lists
            raise UpdateRejected(f"metric {key} is {type(value).__name__}, not a number")
        if not math.isfinite(value):
            raise UpdateRejected(f"metric {key} is not finite")
    examples = metrics.get(NUM_EXAMPLES)
    if examples is None or examples <= 0:
        raise UpdateRejected(f"{NUM_EXAMPLES} must be a positive number, got {examples!r}")
    return float(examples)


def check_prototypes(record: ArrayRecord, joint: str, known: dict[str, np.ndarray]) -> None:
    """Prototypes "<joint>|<scale>" of the site's own joint only, finite float vectors, of the scales, size and
    dtype of the prototypes already known (the server's, and this round's first; `known` is updated with them)."""
    scales = {key.partition(PROTOTYPE_SEP)[2] for key in known}
    sent = {key.partition(PROTOTYPE_SEP)[2] for key in record.keys()}
    if scales and sent != scales:
        raise UpdateRejected(f"prototypes: scales {sorted(sent)}, expected {sorted(scales)}")
    first = next(iter(known.values()), None)
    values = {}
    for key in record.keys():
        owner, _, scale = key.partition(PROTOTYPE_SEP)
        if owner != joint or not scale.isdigit():
            raise UpdateRejected(f"prototypes: {key} is not a prototype of joint {joint}")
        try:
            value = record[key].numpy()
        except Exception as err:  # noqa: BLE001 - any undecodable array is a rejected reply
            raise UpdateRejected(f"prototypes: {key} cannot be read: {err}") from None
        expected = value.shape if first is None else first.shape
        if value.ndim != 1 or value.shape != expected or not np.issubdtype(value.dtype, np.floating) \
                or not np.isfinite(value).all():
            raise UpdateRejected(f"prototypes: {key} must be a finite vector of shape {list(expected)}")
        if first is not None and value.dtype != first.dtype:
            raise UpdateRejected(f"prototypes: {key} is {value.dtype}, expected {first.dtype}")
        values[key] = value
    for key, value in values.items():
        known.setdefault(key, value)


def check_evaluation(reply: Message) -> tuple[dict, str | None]:
    """(the site's evaluation result, None), or ({}, why it cannot be used): a valid site record whose
    `result-json` is a JSON object with per-bone `dice`, `hd95`, `assd` (finite numbers or null) and a
    `mean_dice` (likewise)."""
    try:
        check_identity(reply)
    except UpdateRejected as err:
        return {}, f"evaluation: {err}"
    try:
        result = json.loads(reply.content[SITE][RESULT_JSON])
    except (ValueError, RecursionError) as err:
        return {}, f"evaluation: {RESULT_JSON} is not JSON: {err}"
    usable = isinstance(result, dict) and all(
        isinstance(result.get(m), dict) and all(v is None or _is_number(v) for v in result[m].values())
        for m in EVALUATION_METRICS) and (result.get("mean_dice") is None or _is_number(result["mean_dice"]))
    if not usable:
        return {}, "evaluation: expected per-bone dice, hd95, assd and a mean_dice, each a finite number or null"
    return result, None


def binding_problem(reply: Message, known: dict[int, tuple[str, str]]) -> str | None:
    """Why a reply of a valid identity may not count as it claims: its node is bound to another site or joint."""
    node, claimed = reply.metadata.src_node_id, check_identity(reply)
    if node in known and known[node] != claimed:
        return f"answers as {claimed[0]} ({claimed[1]}), but this node is {known[node][0]} ({known[node][1]})"
    return None


def bound_first(replies: list[Message], known: dict[int, tuple[str, str]]) -> list[Message]:
    """`replies`, those of nodes that answer as the site they are bound to first: where two replies of a round
    name one site, the node bound to it counts and the other is the second."""
    def answers_as_bound(reply: Message) -> bool:
        try:
            return reply.metadata.src_node_id in known and binding_problem(reply, known) is None
        except UpdateRejected:
            return False
    return sorted(replies, key=lambda reply: not answers_as_bound(reply))


@dataclass
class _Checked:
    """A reply that passed every check but the norm bounds, with what the bounds need."""

    reply: Message
    site: str
    joint: str
    arrays: dict[str, np.ndarray]
    norm: float
    head: dict[str, np.ndarray] | None = None
    head_reference: dict[str, np.ndarray] | None = None
    head_norm: float = 0.0
    pooled_norm: float | None = None  # of its joint's pooled head, when the server holds one


@dataclass
class UpdateChecks:
    """The checks of a run: `norm_bound` (0: no clipping), the examples a reply may count at most, and whether
    replies name their site (a stage-1 reply is named by its node).
    `clipped`: the sites whose update or head the last `screen` clipped, with the norms."""

    norm_bound: float
    expected_examples: float = math.inf
    identified: bool = True
    clipped: dict[str, dict] = field(default_factory=dict)

    def weight(self, reply: Message) -> float:
        """What a checked reply weighs: min(its declared `num-examples`, the expected)."""
        return min(float(reply.content[METRICS][NUM_EXAMPLES]), self.expected_examples)

    def screen(self, replies: list[Message], global_arrays: ArrayRecord, heads: dict[str, dict[str, Array]],
               prototypes: dict[str, np.ndarray], known: dict[int, tuple[str, str]] | None = None
               ) -> tuple[list[Message], list[tuple[Message, str]], dict[str, float]]:
        """(the replies that count, clipped where over the norm bound, the rejected ones with their reasons,
        the norm of each checked update by site). `heads`: each joint's pooled head, if the server holds one
        (a copy: this round's first head of a joint without one is added as the reference of the others'
        shapes); `prototypes` likewise; `known`: node id -> (site, joint) each node is bound to: a bound node may
        not answer as another site or joint, and where two replies name one site, the bound node's counts."""
        pooled = {joint: {k: a.numpy() for k, a in head.items()} for joint, head in heads.items()}
        heads, prototypes, known = dict(heads), dict(prototypes), known or {}
        reference = {key: global_arrays[key] for key in global_arrays.keys()}
        globals_ = {key: array.numpy() for key, array in reference.items()}
        checked: list[_Checked] = []
        rejected = []
        for reply in bound_first(replies, known):
            try:
                entry = self._check(reply, reference, globals_, heads, pooled, prototypes)
                if self.identified and (problem := binding_problem(reply, known)):
                    raise UpdateRejected(problem)
                if entry.site in {c.site for c in checked}:
                    raise UpdateRejected(f"a second reply of this round from site {entry.site}")
                checked.append(entry)
            except UpdateRejected as err:
                rejected.append((reply, str(err)))
            except Exception as err:  # noqa: BLE001 - a malformed message never ends the run
                rejected.append((reply, f"malformed reply: {type(err).__name__}: {err}"))
        self.clipped = {}
        accepted = []
        for entry in checked:
            try:
                self._bound(entry, checked, globals_)
            except UpdateRejected as err:
                rejected.append((entry.reply, str(err)))
                continue
            accepted.append(entry.reply)
        return accepted, rejected, {c.site: round(c.norm, 6) for c in checked}

    def _bound(self, entry: _Checked, checked: list[_Checked], globals_: dict[str, np.ndarray]) -> None:
        """Clip the entry's update (and head) to `norm_bound` x the median of the others', in its reply; reject
        it when non-finite or absurd."""
        others = [c.norm for c in checked if c.site != entry.site]
        scale = self._scale(entry.norm, others, "update")
        head_scale = 1.0
        if entry.head is not None:
            heads = [c.head_norm for c in checked if c.head is not None and c.joint == entry.joint
                     and c.site != entry.site]
            if heads or entry.pooled_norm is None:
                head_scale = self._scale(entry.head_norm, heads, "head")
            else:  # the joint's only head this round
                head_scale = self._scale(entry.head_norm, [entry.pooled_norm], "head", "its joint's pooled head's norm")
        if scale < 1.0:
            entry.reply.content[ARRAYS] = _clipped(entry.arrays, globals_, scale)
            self.clipped.setdefault(entry.site, {})["update"] = [round(entry.norm, 6), round(entry.norm * scale, 6)]
        if head_scale < 1.0:
            entry.reply.content[HEAD] = _clipped(entry.head, entry.head_reference, head_scale)
            self.clipped.setdefault(entry.site, {})["head"] = [round(entry.head_norm, 6),
                                                               round(entry.head_norm * head_scale, 6)]

    def _scale(self, norm: float, others: list[float], what: str, against: str = "the other sites'") -> float:
        """1, or the factor that brings `norm` down to `norm_bound` x the median of `others` (`against`: what
        they are, for the reason)."""
        if not math.isfinite(norm):
            raise UpdateRejected(f"{what} norm is not finite")
        median = float(np.median(others)) if others else 0.0
        if median <= 0:  # nothing to compare with, or no scale to use
            return 1.0
        if norm > ABSURD * median:
            raise UpdateRejected(f"{what} norm {norm:.3g} exceeds {ABSURD:g} x the median {median:.3g} of "
                                 f"{against} (absurd)")
        limit = self.norm_bound * median
        return limit / norm if self.norm_bound and norm > limit else 1.0

    def _check(self, reply: Message, reference: dict[str, Array], globals_: dict[str, np.ndarray],
               heads: dict[str, dict[str, Array]], pooled: dict[str, dict[str, np.ndarray]],
               prototypes: dict[str, np.ndarray]) -> _Checked:
        """A reply that passes every check but the norm bounds, with its norms."""
        if self.identified:
            site, joint = check_identity(reply)
        else:
            site, joint = f"node {reply.metadata.src_node_id}", ""
        check_metrics(reply)
        if self.identified and RESULT_JSON in reply.content[SITE]:  # the evaluation riding on the training
            _, problem = check_evaluation(reply)
            if problem:
                raise UpdateRejected(problem)
        if ARRAYS not in reply.content.array_records:
            raise UpdateRejected("no shared arrays")
        arrays = check_arrays(reply.content[ARRAYS], reference, "shared weights")
        entry = _Checked(reply, site, joint, arrays, _norm(arrays, globals_))
        if PROTOTYPES in reply.content.array_records:
            if not reply.content[METRICS].get(PROTOTYPE_SLICES, 0) > 0:
                raise UpdateRejected(f"prototypes without a positive {PROTOTYPE_SLICES}")
            check_prototypes(reply.content[PROTOTYPES], joint, prototypes)
        if HEAD in reply.content.array_records:  # like the joint's pooled head, or the first head of this round
            head = reply.content[HEAD]
            entry.head = check_arrays(head, heads.setdefault(joint, {k: head[k] for k in head.keys()}), "head")
            zeros = {k: np.zeros_like(v) for k, v in entry.head.items()}
            entry.head_reference = pooled.get(joint) or zeros
            entry.head_norm = _norm(entry.head, entry.head_reference)
            if joint in pooled:
                entry.pooled_norm = _norm(pooled[joint], zeros)
        return entry
