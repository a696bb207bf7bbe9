"""Round numbers of a resumed run."""

from __future__ import annotations


class ContinuedRounds:
    """Mixin for a Flower strategy (first in the bases): Flower's loop numbers its rounds from 1, a resumed run
    continues after the `rounds_done` rounds it already has, so every round number is shifted by those."""

    rounds_done = 0

    def configure_train(self, server_round, arrays, config, grid):
        return super().configure_train(server_round + self.rounds_done, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round + self.rounds_done, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return super().configure_evaluate(server_round + self.rounds_done, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return super().aggregate_evaluate(server_round + self.rounds_done, replies)
