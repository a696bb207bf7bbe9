"""server.prompt_grid: each reply goes through `on_reply` once, as it arrives (the replies' array retries are
`flower_common.flower_patches`', tests/flower_common/test_flower_patches.py)."""

from server.prompt_grid import PromptGrid
from tests.server.replies import reply


class SlowSitesGrid:
    """The two calls of Flower's Grid a PromptGrid makes: each pull returns the next site's reply."""

    def __init__(self, nodes: list[int]) -> None:
        self.replies = [reply(node, f"site-{node}") for node in nodes]
        self.pulls = 0

    def push_messages(self, messages):
        return [f"to-{m}" for m in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [r for r in self.replies[self.pulls - 1:self.pulls] if r.metadata.reply_to_message_id in message_ids]


def test_each_reply_goes_through_on_reply_once_as_it_arrives():
    grid = PromptGrid(SlowSitesGrid([1, 2, 3]))
    seen = []
    grid.on_reply = lambda r: seen.append((r.metadata.src_node_id, grid.grid.pulls)) or r
    replies = grid.send_and_receive([1, 2, 3])
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3]
    assert seen == [(1, 1), (2, 2), (3, 3)]  # each at the pull that brought it, not all after the last
