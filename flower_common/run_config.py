"""THE adapter between a Flower run config and pedseg's typed configuration.

What crosses into Flower is one document: `config-json`, the whole resolved configuration as JSON
(`pedseg_core.config.PedsegConfig.to_dict`), which every launcher writes (`with_config_document`) and the
ServerApp and every site read back as it is. A run config without it (`flwr run` by hand, with pyproject's
`[tool.flwr.app.config]` keys) is resolved from `preset`, the keys of RUN_CONFIG_FIELDS and `overrides`
("section.key=value ..." split like a shell line, so a value may be quoted), which win.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from pedseg_core.config import PedsegConfig, build_config, config_from_dict, parse_overrides
from pedseg_core.errors import PedsegError

CONFIG_DOCUMENT = "config-json"

# Flower run-config keys (flat, hyphenated, as Flower requires) -> PedsegConfig fields.
RUN_CONFIG_FIELDS = {
    "scheme": "scheme",
    "num-server-rounds": "federation.rounds",
    "strategy": "federation.strategy",
    "proximal-mu": "federation.proximal_mu",
    "min-nodes": "federation.min_nodes",
    "quorum-timeout": "federation.quorum_timeout",
    "fraction-train": "federation.fraction_train",
    "round-timeout": "federation.round_timeout",
    "evaluate-every": "federation.evaluate_every",
    "per-case-metrics": "federation.per_case_metrics",
    "norm-bound": "federation.norm_bound",
    "aggregation": "federation.aggregation",
    "secure-aggregation": "federation.secure_aggregation",
    "message-dtype": "federation.message_dtype",
    "share-prototypes": "contrastive.share_prototypes",
}
ZERO_MEANS_PRESET = ("evaluate-every",)  # run-config keys whose 0 means "the preset's value"
CONFIG_KEYS = {"preset", "overrides", CONFIG_DOCUMENT, *RUN_CONFIG_FIELDS}


def config_from_run_config(run_config: dict[str, Any]) -> PedsegConfig:
    """The typed configuration of a run: its `config-json` document when it has one, else resolved from the
    preset, the run-config keys and the overrides (a list of "section.key=value", or one string of them)."""
    document = str(run_config.get(CONFIG_DOCUMENT, ""))
    if document:
        try:
            values = json.loads(document)
        except ValueError as err:
            raise PedsegError(f"run config {CONFIG_DOCUMENT}: not JSON ({err})") from None
        if not isinstance(values, dict):
            raise PedsegError(f"run config {CONFIG_DOCUMENT}: expected a JSON object")
        return config_from_dict(values)
    pairs = [f"{target}={run_config[key]}" for key, target in RUN_CONFIG_FIELDS.items()
             if key in run_config and not (key in ZERO_MEANS_PRESET and run_config[key] == 0)]
    pairs += override_list(run_config.get("overrides", ""))
    return build_config(str(run_config.get("preset", "small")), overrides=parse_overrides(pairs))


def override_list(overrides: str | Sequence[str]) -> list[str]:
    """["a.b=1", ...] as it is; "a.b=1 c.d='x y'" split like a shell line."""
    if isinstance(overrides, str):
        try:
            return shlex.split(overrides)
        except ValueError as err:
            raise PedsegError(f"run config overrides {overrides!r}: {err}") from None
    return [str(x) for x in overrides]


def with_config_document(app_config: dict[str, Any]) -> dict[str, Any]:
    """`app_config` as it crosses into Flower: its configuration keys replaced by the one `config-json`
    document of the resolved configuration; the other keys (out-dir, resume-from, sites-json) kept."""
    cfg = config_from_run_config(app_config)
    return {**{k: v for k, v in app_config.items() if k not in CONFIG_KEYS},
            CONFIG_DOCUMENT: json.dumps(cfg.to_dict(), separators=(",", ":"))}
