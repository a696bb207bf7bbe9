"""A process that serves several messages keeps its site trainers between them, but uses one only if it handled
that node's previous message: Flower's simulation hands a node's messages to any of its actors, and an actor
that last saw the site rounds ago holds its private layers, Adam state and DP accountant of then."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, RecordDict

from client import app as clientapp


def test_a_trainer_is_reused_only_by_the_process_that_handled_the_nodes_previous_message(tmp_path, write_dataset):
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(write_dataset()), "state-dir": str(tmp_path / "s"),
            "threads": 1}
    context = Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config={"preset": "tiny"})
    clientapp._CACHE.clear()
    first, _ = clientapp._site(context)  # actor A handles message 1
    assert clientapp._site(context)[0] is first  # and message 2: its trainer is current
    actor_a = dict(clientapp._CACHE)

    clientapp._CACHE.clear()  # actor B (its own process, its own cache) handles message 3 and trains the site
    trained, _ = clientapp._site(context)
    assert trained is not first
    private = trained.private_state()
    key = next(k for k in private if k.endswith("weight"))
    private[key] = private[key] + 1.0
    context.state[clientapp.PRIVATE_KEY] = ArrayRecord(private)  # what the handler leaves in the node's state

    clientapp._CACHE.clear()  # back on actor A for message 4: its trainer has not seen message 3
    clientapp._CACHE.update(actor_a)
    current, _ = clientapp._site(context)
    assert current is not first
    torch.testing.assert_close(current.private_state()[key], private[key])
    assert clientapp._site(context)[0] is current
    clientapp._CACHE.clear()
