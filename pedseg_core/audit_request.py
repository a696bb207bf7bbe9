"""The request behind a reply, as a site's audit log records it: the run configuration's values that the site's
policy bounds or that decide what leaves (`pedseg_core.train.request_bounds.violations` checks them), and sha256
digests of the whole run configuration and of the message's config record, so that a reviewer can tell two
requests apart even where they differ in a value not listed."""

from __future__ import annotations

import hashlib
import json
from operator import attrgetter
from typing import Any

from pedseg_core.config import PedsegConfig

REQUEST_OPTIONS = (
    "scheme", "train.batch_size", "train.steps_per_epoch", "train.learning_rate", "prior.batch_size",
    "prior.steps_per_epoch", "prior.learning_rate", "data.image_size", "model.decoder_channels", "prior.channels",
    "contrastive.hidden", "contrastive.dim", "contrastive.share_prototypes", "contrastive.min_prototype_slices",
    "data.augment", "data.augment_probability", "federation.per_case_metrics", "federation.secure_aggregation",
    "federation.message_dtype",
)


def request_values(cfg: PedsegConfig) -> dict[str, Any]:
    """The run configuration's REQUEST_OPTIONS, by option name (tuples as lists)."""
    values = {}
    for option in REQUEST_OPTIONS:
        value = attrgetter(option)(cfg)
        values[option] = list(value) if isinstance(value, tuple) else value
    return values


def digest(values: dict) -> str:
    """sha256 of a record's canonical JSON (keys sorted; bytes as hex, lists of bytes item by item)."""
    text = json.dumps(values, sort_keys=True, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
