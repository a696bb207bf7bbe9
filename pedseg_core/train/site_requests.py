"""What a site algorithm (`pedseg_core.train.site_algorithm`) is asked and what it answers, as typed values, without
any federated-learning framework: a Flower adapter (client/app.py) translates its records to and from them, and a
hospital may drive the algorithm by hand.

Weights are torch state dicts on the CPU. Prototypes are keyed as on the wire, "<joint>|<scale>" -> the joint's
mean projected embedding [D] (`pedseg_core.protocol.PROTOTYPE_SEP`); metric names are the wire's
(`pedseg_core.protocol`: "train-loss", "epsilon", "prototype-slices", ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy
from pedseg_core.train.request_bounds import SiteOwnValues

StateDict = dict[str, Tensor]


class UnionLabels(NamedTuple):
    """The union label space over every joint of a run (the `shared` scheme's head and the shape prior)."""

    classes: int  # background and every joint's bones
    offset: int  # this joint's first bone is union label offset + 1

    @classmethod
    def of(cls, classes: int, offsets_json: str, joint: str) -> UnionLabels:
        """From the server's class count and its JSON table {joint: offset}."""
        offsets = json.loads(offsets_json)
        if joint not in offsets:
            raise PedsegError(f"union label space: the server sent no offset for joint {joint!r}")
        return cls(int(classes), int(offsets[joint]))


@dataclass(frozen=True)
class SiteSettings:
    """Who the site is and what it keeps: set by the hospital, never by the server."""

    site: str
    joint: str
    data_dir: Path
    state_dir: Path  # private layers, optimizer and DP state, models, sent copies (`PrivateStore`)
    part: tuple[int, int] = (0, 1)  # (i, k): every k-th training case from i (simulated sites of one joint)
    policy: SitePolicy = field(default_factory=SitePolicy)  # what may leave it; its DP-SGD budget
    keep_sent: bool = False  # keep a copy of every training reply in <state_dir>/run-<run>/sent/
    own: SiteOwnValues = field(default_factory=SiteOwnValues)  # its evaluation split, device: never the run's


@dataclass
class EvaluateRequest:
    shared: StateDict  # the global shared weights of `server_round`
    server_round: int


@dataclass
class EvaluateResult:
    """The site's `results.json` entry: per-bone dice/hd95/assd, mean_dice, cases, [per_case], [epsilon]; or
    None and why no metric leaves (`withheld`: the policy's min_eval_cases, in words that name no count)."""

    entry: dict | None
    withheld: str | None = None

    @property
    def num_examples(self) -> int:
        return int(self.entry["cases"])

    @property
    def mean_dice(self) -> float:
        return float(self.entry["mean_dice"] or 0.0)


@dataclass
class TrainRequest:
    shared: StateDict  # the round's global shared weights
    server_round: int
    num_rounds: int
    proximal_mu: float = 0.0
    prototypes: StateDict = field(default_factory=dict)  # every joint's, "<joint>|<scale>" -> [D]
    head: StateDict | None = None  # this joint's head pooled over its sites
    prior: StateDict | None = None  # the frozen shape auto-encoder (`full`)
    union: UnionLabels | None = None  # sent with the prior and in the `shared` scheme
    evaluate_first: bool = False  # first evaluate `shared` (the previous round's global weights)
    share_head: bool = False  # the server pools this joint's head: send it


@dataclass
class TrainResult:
    """What leaves the site after a round (before the site's policy mod and the wire encodings)."""

    shared: StateDict
    num_examples: int
    metrics: dict[str, float]  # wire names; no training loss under DP
    prototypes: StateDict | None = None  # its own joint's, "<joint>|<scale>" -> [D]
    head: StateDict | None = None
    evaluation: EvaluateResult | None = None  # of the previous round's weights, when asked first


@dataclass
class PriorRequest:
    """Stage 1 of `full`: one round of the shape auto-encoder."""

    autoencoder: StateDict
    server_round: int
    union: UnionLabels


@dataclass
class PriorResult:
    autoencoder: StateDict
    num_examples: int
    metrics: dict[str, float]  # wire names; none under DP
