"""One line of a run's metrics.jsonl, typed: every line is written (`RunDir.log`) and read (`read_metrics`)
through `MetricsLine`, under the JSON keys users and tests read.

A line is one of: a federated round (server/round_log.py: who contributed with what metrics, who was missing,
rejected or answered with an error, the aggregation, the evaluation it carries); a round of the federated
`full` scheme's stage 1 (`stage: prior`, with a `round`); an epoch of a centralized stage (`stage`, `epoch`)
or the adaptation of a new site (`stage: adapt`); an event of the run (`event: resumed | run-ended`). A stage's
own statistics (loss, lr, ...) are kept as they come (pydantic's extra fields).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pedseg_core.errors import PedsegError

STAGE_PRIOR = "prior"
RUN_ENDED = "run-ended"


class SiteEvent(BaseModel):
    """A site and why it did not count this round (a missing site, a rejected update, an error reply)."""

    model_config = ConfigDict(extra="allow")

    site: str = "?"
    reason: str = ""


class Evaluation(BaseModel):
    """The evaluation a round carries: each site's personalized model on its own test cases."""

    model_config = ConfigDict(extra="allow")

    mean_dice: float | None = None
    sites: dict[str, dict[str, Any]] = {}  # site -> {"dice": {bone: v}, "hd95", "assd", "mean_dice"}


class MetricsLine(BaseModel):
    """One metrics.jsonl line; a field that the line does not hold is left unwritten."""

    model_config = ConfigDict(extra="allow")

    # a round: federated training (its number), or stage 1 of the `full` scheme (with stage: prior)
    round: int | None = None
    started_at: float | None = None
    sites: dict[str, dict[str, Any]] = {}  # site -> its training metrics (joint, num-examples, train-loss, epsilon)
    missing: list[SiteEvent] = []
    rejected: list[SiteEvent] = []
    errors: list[SiteEvent] = []
    policy_refusals: dict[str, Any] = {}  # site -> what its policy refused of the run's requests (as it says)
    update_norms: dict[str, Any] = {}
    train_loss: float | None = None  # example-weighted over the sites that sent one
    examples: float | None = None
    aggregation: str | None = None
    aggregated_keys: int | None = None
    aggregation_s: float | None = None
    secure_aggregation: dict[str, Any] | None = None
    round_time_s: float | None = None
    evaluation: Evaluation | None = None
    # a stage of training: a centralized stage's epoch, the prior's stage, an adaptation
    stage: str | None = None
    epoch: int | None = None
    time_s: float | None = None
    # an event of the federated run
    event: str | None = None  # "resumed" | "run-ended"
    after_round: int | None = None
    reason: str | None = None

    @property
    def is_round(self) -> bool:
        """A round of the federated training (not one of stage 1's)."""
        return self.round is not None and self.stage != STAGE_PRIOR

    @property
    def is_prior_round(self) -> bool:
        return self.round is not None and self.stage == STAGE_PRIOR

    @property
    def is_epoch(self) -> bool:
        """A line of centralized training or adaptation: neither a round nor an event."""
        return self.round is None and self.event is None

    @property
    def site_evaluations(self) -> dict[str, dict[str, Any]]:
        """site -> its evaluation this round ({} when the round carries none)."""
        return self.evaluation.sites if self.evaluation else {}

    @property
    def epsilon(self) -> dict[str, float]:
        """site -> the epsilon a DP site had spent after this round."""
        return {s: float(m["epsilon"]) for s, m in self.sites.items() if m.get("epsilon") is not None}

    @property
    def named_sites(self) -> set[str]:
        """Every site this round names."""
        return set(self.sites) | {e.site for e in self.missing + self.rejected + self.errors}

    def values(self) -> dict[str, Any]:
        """The line as it is written: the keys it holds, NaN and infinities as null."""
        return json_safe(self.model_dump(mode="python", exclude_unset=True))

    def to_json(self) -> str:
        return json.dumps(self.values(), allow_nan=False)


def metrics_line(record: dict[str, Any] | MetricsLine) -> MetricsLine:
    """A line to write, checked; PedsegError (one line) when a value is not of its key's type."""
    if isinstance(record, MetricsLine):
        return record
    try:
        return MetricsLine.model_validate(record)
    except ValidationError as err:
        problem = err.errors()[0]
        raise PedsegError(f"a metrics.jsonl line: {'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None


def read_metrics(path: Path) -> list[MetricsLine]:
    """The lines of a metrics.jsonl ([] when there is none); a last line still being written (or cut by a kill)
    is left out; PedsegError naming any other bad line."""
    path = Path(path)
    try:
        texts = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise PedsegError(f"{path}: cannot read: {err.strerror or err}") from None
    lines = []
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            continue
        try:
            lines.append(MetricsLine.model_validate_json(text))
        except ValidationError as err:
            problem = err.errors()[0]
            if problem["type"] == "json_invalid":
                if number == len(texts):
                    break
                raise PedsegError(f"{path}:{number}: not a JSON line") from None
            where = ".".join(map(str, problem["loc"]))
            raise PedsegError(f"{path}:{number}: not a metrics line ({where + ': ' if where else ''}"
                              f"{problem['msg']})") from None
    return lines


def json_safe(value: Any) -> Any:
    """NaN/inf (not valid JSON) become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
