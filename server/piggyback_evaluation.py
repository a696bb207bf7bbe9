"""The evaluation that rides on the next round's training message.

In round r the server asks the sites (`evaluate-first`) to evaluate their personalized model on the global
weights they just received (the result of round r-1) before they train, which saves a whole message exchange
per round; only after the last round is there a separate evaluation. Round r-1's metrics line therefore waits
for round r's replies, and is written before round r's.
"""

from __future__ import annotations

import json

from flwr.app import Message

from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.protocol import RESULT_JSON, SITE, SITE_NAME
from server.round_log import RoundLog
from server.update_checks import binding_problem, bound_first, check_evaluation


class PiggybackEvaluation:
    """Which rounds ask for an evaluation first, the round record waiting for it, and the sites' last results."""

    def __init__(self, evaluate_every: int, num_rounds: int) -> None:
        self.evaluate_every, self.num_rounds = evaluate_every, num_rounds
        self.awaiting: dict | None = None  # the record of the round evaluated with the next round's training
        self.last: dict[str, dict] = {}  # site -> its latest evaluation result (results.json)

    def asks_first(self, server_round: int) -> bool:
        """Whether round `server_round`'s training message asks for the previous round's evaluation."""
        return server_round > 1 and (server_round - 1) % self.evaluate_every == 0

    def collect(self, evaluated_round: int, replies: list[Message], rounds: RoundLog) -> float | None:
        """Put the site results that replies carry into the record of `evaluated_round` (the round in progress,
        or the one waiting); returns their mean Dice. A malformed result, one of a node that answers as another
        site or joint than it is bound to, or a second one of a site, is rejected in `rounds`."""
        results = {}
        known = rounds.roster.known()
        for msg in bound_first(replies, known):
            if SITE not in msg.content.config_records or RESULT_JSON not in msg.content[SITE]:
                continue
            result, problem = check_evaluation(msg)
            if not problem:
                site, binding = msg.content[SITE][SITE_NAME], binding_problem(msg, known)
                problem = (f"evaluation: {binding}" if binding else
                           f"evaluation: a second result of this round from site {site}" if site in results else None)
            if problem:
                rounds.note_rejected([(msg, problem)])
            else:
                results[rounds.site_of(msg)] = result
        if not results:
            return None
        self.last = results
        mean = mean_or_none(r["mean_dice"] for r in results.values())
        record = rounds.record if evaluated_round == rounds.record.get("round") else self.awaiting
        if record is not None:
            record["evaluation"] = {
                "mean_dice": mean,
                "sites": {site: {k: r[k] for k in ("dice", "hd95", "assd", "mean_dice")}
                          for site, r in results.items()}}
        return mean

    def release(self, record: dict, server_round: int) -> list[dict]:
        """The metrics lines to write after round `server_round`, in order: the round that waited for its
        evaluation, then this one unless it now waits for the next round's."""
        ready = [self.awaiting] if self.awaiting is not None else []
        self.awaiting = None
        if server_round % self.evaluate_every == 0 and server_round < self.num_rounds:
            self.awaiting = record
        else:
            ready.append(record)
        return ready

    def state_dict(self) -> dict:
        return {"awaiting_evaluation": json.dumps(self.awaiting), "last_evaluation": json.dumps(self.last)}

    def load_state_dict(self, state: dict) -> None:
        self.awaiting = json.loads(state["awaiting_evaluation"])
        self.last = json.loads(state["last_evaluation"])
