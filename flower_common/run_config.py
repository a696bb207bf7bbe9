"""THE adapter between a Flower run config and pedseg's typed configuration.

What crosses into Flower is one document: `config-json`, the whole resolved configuration as JSON
(`pedseg_core.config.PedsegConfig.to_dict`), which every launcher writes (`run_config_with_document`) and the
ServerApp and every site read back as it is. A run config without it (`flwr run` by hand) is resolved from
`preset`, the keys of RUN_CONFIG_FIELDS and `overrides` ("section.key=value ..." split like a shell line, so a
value may be quoted), which win. pyproject's `[tool.flwr.app.config]` lists those keys only so that Flower
accepts them, each unset (""): every default is the preset's.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pedseg_core.config import DEFAULT_PRESET, PedsegConfig, build_config, config_from_dict, nested, parse_overrides
from pedseg_core.errors import PedsegError

CONFIG_DOCUMENT = "config-json"
UNSET = ""  # a run-config key as pyproject lists it: the preset's value

# Flower run-config keys (flat, hyphenated, as Flower requires) -> PedsegConfig fields.
RUN_CONFIG_FIELDS = {
    "scheme": "scheme",
    "rounds": "federation.rounds",
    "strategy": "federation.strategy",
    "proximal-mu": "federation.proximal_mu",
    "min-sites": "federation.min_nodes",
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


def config_from_run_config(run_config: dict[str, Any]) -> PedsegConfig:
    """The typed configuration of a run: its `config-json` document when it has one, else resolved from the
    preset, the run-config keys that are set and the overrides (one string of "section.key=value")."""
    document = str(run_config.get(CONFIG_DOCUMENT, UNSET))
    if document:
        try:
            values = json.loads(document)
        except ValueError as err:
            raise PedsegError(f"run config {CONFIG_DOCUMENT}: not JSON ({err})") from None
        if not isinstance(values, dict):
            raise PedsegError(f"run config {CONFIG_DOCUMENT}: expected a JSON object")
        return config_from_dict(values)
    keys = nested({target: run_config[key] for key, target in RUN_CONFIG_FIELDS.items()
                   if run_config.get(key, UNSET) != UNSET})
    return build_config(str(run_config.get("preset") or DEFAULT_PRESET), options=keys,
                        overrides=parse_overrides(_split(str(run_config.get("overrides", UNSET)))))


def _split(overrides: str) -> list[str]:
    """"a.b=1 c.d='x y'" split like a shell line."""
    try:
        return shlex.split(overrides)
    except ValueError as err:
        raise PedsegError(f"run config overrides {overrides!r}: {err}") from None


def run_config_with_document(cfg: PedsegConfig, flower_keys: dict[str, str]) -> dict[str, str]:
    """The run config a launcher sends: the resolved `cfg` as the one `config-json` document, and the keys
    that are Flower's side of the run (out-dir, resume-from, sites-json)."""
    return {**flower_keys, CONFIG_DOCUMENT: json.dumps(cfg.to_dict(), separators=(",", ":"))}
