"""One federated round as metrics.jsonl records it (server/strategy.py writes one line per round)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SiteEvent:
    """A site and why it did not count this round (a missing site, a rejected update, an error reply)."""

    site: str
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    """A round: who trained, who did not and why, how long it took, and the evaluation it carries."""

    round: int
    seconds: float | None
    contributed: dict[str, dict]  # site -> the training metrics it sent (joint, num-examples, train-loss, epsilon...)
    missing: list[SiteEvent]
    rejected: list[SiteEvent]
    errors: list[SiteEvent]
    evaluation: dict[str, dict] = field(default_factory=dict)  # site -> {"dice": {bone: v}, ..., "mean_dice": v}
    mean_dice: float | None = None
    train_loss: float | None = None
    aggregation: str | None = None
    refusals: dict[str, list] = field(default_factory=dict)  # site -> what its policy refused of the run's requests
    secure_aggregation: dict | None = None

    @property
    def epsilon(self) -> dict[str, float]:
        """site -> the epsilon a DP site had spent after this round."""
        return {s: float(m["epsilon"]) for s, m in self.contributed.items() if m.get("epsilon") is not None}

    @property
    def sites(self) -> set[str]:
        """Every site this round names."""
        return set(self.contributed) | {e.site for e in self.missing + self.rejected + self.errors}


def _events(entries: list | None) -> list[SiteEvent]:
    return [SiteEvent(str(e.get("site", "?")), str(e.get("reason", ""))) for e in entries or []]


def is_round_line(line: dict) -> bool:
    """A line of the federated run's rounds (not one of the `full` scheme's stage 1, `stage: prior`)."""
    return "round" in line and line.get("stage") != "prior"


def parse_round(line: dict) -> RoundRecord:
    """A metrics.jsonl round line (its "round" key present) -> RoundRecord."""
    evaluation = line.get("evaluation") or {}
    return RoundRecord(round=int(line["round"]), seconds=line.get("round_time_s"), contributed=line.get("sites") or {},
                       missing=_events(line.get("missing")), rejected=_events(line.get("rejected")),
                       errors=_events(line.get("errors")), evaluation=evaluation.get("sites") or {},
                       mean_dice=evaluation.get("mean_dice"), train_loss=line.get("train_loss"),
                       aggregation=line.get("aggregation"), refusals=line.get("policy_refusals") or {},
                       secure_aggregation=line.get("secure_aggregation"))
