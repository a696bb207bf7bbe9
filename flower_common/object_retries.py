"""Shorter retries for a Flower array that is announced before it has arrived (flwr 1.41).

Whoever sends a message in Flower 1.41 sends the message first and its arrays after it, so whoever pulls it
often asks for an array that is not there yet; Flower's `pull_objects` then retries after 1 s, 2, 4 and up to
10 s (`flwr.supercore.constant.PULL_INITIAL_BACKOFF`, `PULL_BACKOFF_CAP`), with no setting to change it. This
happens on every hop: the SuperNode and the site worker pulling the round's message, the ServerApp pulling the
sites' replies. Retries here start at `OBJECT_RETRY_S` and stop doubling at `OBJECT_RETRY_CAP_S`: one small
request each to a process on the same link.
"""

from __future__ import annotations

from functools import partial

from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree, pull_objects

OBJECT_RETRY_S = 0.05  # first retry of an array not there yet (Flower: 1 s, doubling)
OBJECT_RETRY_CAP_S = 0.1  # (Flower: 10 s)

pull_objects_promptly = partial(pull_objects, initial_backoff=OBJECT_RETRY_S, backoff_cap=OBJECT_RETRY_CAP_S)
pull_object_tree_promptly = partial(pull_and_inflate_object_from_tree, initial_backoff=OBJECT_RETRY_S,
                                    backoff_cap=OBJECT_RETRY_CAP_S)
