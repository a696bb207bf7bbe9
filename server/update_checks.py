"""Every training reply is checked before it counts; one that fails is dropped whole, with its reason.

A reply must carry its site's identity; exactly the keys of the global shared weights, each of the global shape
and dtype, with finite values; finite metrics, with `num-examples` in (0, the count this site declared at its
first counted round]; prototypes only of its own joint, one finite vector per scale; a head (when sent) of the
keys, shapes and dtypes of its joint's pooled head. Then the update's size: the L2 norm of its shared weights
minus the global ones may not exceed `norm_bound` times the median norm of the round's other checked replies
(a round with a single reply has nothing to compare with). The reasons go to the round's metrics.jsonl line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from pedseg_core.protocol import (
    ARRAYS,
    HEAD,
    JOINT,
    METRICS,
    NUM_EXAMPLES,
    PROTOTYPE_SEP,
    PROTOTYPE_SLICES,
    PROTOTYPES,
    RESULT_JSON,
    SITE,
    SITE_NAME,
)


class UpdateRejected(Exception):
    """A reply that does not count; the message says why, in a few words."""


def _names(keys: set[str]) -> str:
    listed = ", ".join(sorted(keys)[:3])
    return f"{listed}, ... ({len(keys)})" if len(keys) > 3 else listed


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


def _squared_distance(value: np.ndarray, reference: np.ndarray) -> float:
    """||value - reference||^2 of one array, in its own precision (float32 weights: ~1e-5 relative, ample for a
    norm bound); integer arrays (BatchNorm's step counts) in float64."""
    if not np.issubdtype(value.dtype, np.floating):
        value, reference = value.astype(np.float64), reference.astype(np.float64)
    with np.errstate(over="ignore"):  # an overflowing update is inf: beyond any bound
        difference = (value - reference).reshape(-1)
        return float(np.dot(difference, difference))


def check_metrics(reply: Message, declared: float | None) -> float:
    """The reply's `num-examples`, if every metric is finite and the count is in (0, `declared`]."""
    if METRICS not in reply.content.metric_records:
        raise UpdateRejected("no metrics record")
    metrics = reply.content[METRICS]
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise UpdateRejected(f"metric {key} is not finite")
    examples = metrics.get(NUM_EXAMPLES)
    if not isinstance(examples, (int, float)) or examples <= 0:
        raise UpdateRejected(f"{NUM_EXAMPLES} must be a positive number, got {examples!r}")
    if declared is not None and examples > declared:
        raise UpdateRejected(f"{NUM_EXAMPLES} {examples:g} exceeds the {declared:g} this site declared first")
    return float(examples)


def check_prototypes(record: ArrayRecord, joint: str, known: dict[str, np.ndarray]) -> None:
    """Prototypes "<joint>|<scale>" of the site's own joint only, finite vectors, of the scales and size of the
    prototypes already known (the server's, and this round's first; `known` is updated with them)."""
    scales = {key.partition(PROTOTYPE_SEP)[2] for key in known}
    sent = {key.partition(PROTOTYPE_SEP)[2] for key in record.keys()}
    if scales and sent != scales:
        raise UpdateRejected(f"prototypes: scales {sorted(sent)}, expected {sorted(scales)}")
    size = next(iter(known.values())).shape if known else None
    for key in record.keys():
        owner, _, scale = key.partition(PROTOTYPE_SEP)
        if owner != joint or not scale.isdigit():
            raise UpdateRejected(f"prototypes: {key} is not a prototype of joint {joint}")
        value = record[key].numpy()
        expected = size or value.shape
        if value.ndim != 1 or value.shape != expected or not np.isfinite(value).all():
            raise UpdateRejected(f"prototypes: {key} must be a finite vector of shape {list(expected)}")
    for key in record.keys():
        known.setdefault(key, record[key].numpy())


def check_evaluation(reply: Message) -> tuple[dict, str | None]:
    """(the site's evaluation result, None), or ({}, why it cannot be used): a JSON object with per-bone
    `dice`, `hd95`, `assd` and a `mean_dice`."""
    try:
        result = json.loads(str(reply.content[SITE][RESULT_JSON]))
    except ValueError as err:
        return {}, f"evaluation: {RESULT_JSON} is not JSON: {err}"
    if not isinstance(result, dict) or not all(isinstance(result.get(k), dict) for k in ("dice", "hd95", "assd")) \
            or not isinstance(result.get("mean_dice"), (int, float, type(None))):
        return {}, "evaluation: expected per-bone dice, hd95, assd and a mean_dice"
    if SITE_NAME not in reply.content[SITE] or JOINT not in reply.content[SITE]:
        return {}, "evaluation: the site record names no site or joint"
    return result, None


@dataclass
class UpdateChecks:
    """The checks of a run, with what they remember: each site's first declared example count."""

    norm_bound: float
    declared: dict[str, float] = field(default_factory=dict)

    def screen(self, replies: list[Message], global_arrays: ArrayRecord, heads: dict[str, dict[str, Array]],
               prototypes: dict[str, np.ndarray], known: dict[int, tuple[str, str]] | None = None
               ) -> tuple[list[Message], list[tuple[Message, str]], dict[str, float]]:
        """(the replies that count, the rejected ones with their reasons, the norm of each checked update by
        site). `heads`: each joint's pooled head, if the server holds one (a copy: this round's first head of a
        joint without one is added as the reference of the others); `prototypes` likewise; `known`: node id ->
        (site, joint) the server already knows: a known node may not answer as another site or joint."""
        heads, prototypes, known = dict(heads), dict(prototypes), known or {}
        reference = {key: global_arrays[key] for key in global_arrays.keys()}
        globals_ = {key: array.numpy() for key, array in reference.items()}
        checked, rejected = [], []
        for reply in replies:
            try:
                entry = (reply, *self._check(reply, reference, globals_, heads, prototypes))
                node = reply.metadata.src_node_id
                claimed = (str(reply.content[SITE][SITE_NAME]), str(reply.content[SITE][JOINT]))
                if node in known and known[node] != claimed:
                    raise UpdateRejected(f"answers as {claimed[0]} ({claimed[1]}), but this node is "
                                         f"{known[node][0]} ({known[node][1]})")
                if entry[1] in {site for _, site, _, _ in checked}:
                    raise UpdateRejected(f"a second reply of this round from site {entry[1]}")
                checked.append(entry)
            except UpdateRejected as err:
                rejected.append((reply, str(err)))
            except (KeyError, TypeError, ValueError) as err:  # a malformed message never crashes the server
                rejected.append((reply, f"malformed reply: {type(err).__name__}: {err}"))
        norms = {site: norm for _, site, norm, _ in checked}
        accepted = []
        for reply, site, norm, examples in checked:
            others = [n for s, n in norms.items() if s != site]
            median = float(np.median(others)) if others else 0.0
            limit = self.norm_bound * median if median > 0 and self.norm_bound else math.inf  # 0: no scale to use
            if norm > limit:
                rejected.append((reply, f"update norm {norm:.3g} exceeds {self.norm_bound:g} x the median "
                                        f"{limit / self.norm_bound:.3g} of the other sites' (norm-bound)"))
                continue
            self.declared.setdefault(site, examples)
            accepted.append(reply)
        return accepted, rejected, {site: round(norm, 6) for site, norm in norms.items()}

    def _check(self, reply: Message, reference: dict[str, Array], globals_: dict[str, np.ndarray],
               heads: dict[str, dict[str, Array]], prototypes: dict[str, np.ndarray]) -> tuple[str, float, float]:
        """(site, update norm, num-examples) of a reply that passes every check but the norm bound."""
        if SITE not in reply.content.config_records:
            raise UpdateRejected("no site record")
        site, joint = str(reply.content[SITE][SITE_NAME]), str(reply.content[SITE][JOINT])
        examples = check_metrics(reply, self.declared.get(site))
        if ARRAYS not in reply.content.array_records:
            raise UpdateRejected("no shared arrays")
        arrays = check_arrays(reply.content[ARRAYS], reference, "shared weights")
        if PROTOTYPES in reply.content.array_records:
            if not reply.content[METRICS].get(PROTOTYPE_SLICES, 0) > 0:
                raise UpdateRejected(f"prototypes without a positive {PROTOTYPE_SLICES}")
            check_prototypes(reply.content[PROTOTYPES], joint, prototypes)
        if HEAD in reply.content.array_records:  # like the joint's pooled head, or the first head of this round
            head = reply.content[HEAD]
            check_arrays(head, heads.setdefault(joint, {k: head[k] for k in head.keys()}), "head")
        return site, math.sqrt(sum(_squared_distance(arrays[k], g) for k, g in globals_.items())), examples
