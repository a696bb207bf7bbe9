"""A process that serves several messages keeps its site algorithms between them, but uses one only if it handled
that node's previous message: Flower's simulation hands a node's messages to any of its actors, and an actor
that last saw the site rounds ago holds its private layers, Adam state and DP accountant of then. The run's
configuration is parsed once per run, not per message."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from client import app as clientapp
from client import node_settings
from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.train.request_bounds import SiteOwnValues
from pedseg_core.train.site_algorithm_cache import SiteAlgorithmCache


def test_an_algorithm_is_reused_only_by_the_process_that_handled_the_nodes_previous_message(tmp_path, write_dataset,
                                                                                            monkeypatch):
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(write_dataset()), "state-dir": str(tmp_path / "s"),
            "threads": 1}
    context = Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config={"preset": "tiny"})
    actor_a, actor_b = SiteAlgorithmCache(), SiteAlgorithmCache()  # each actor process has its own
    monkeypatch.setattr(clientapp, "ALGORITHMS", actor_a)
    first = clientapp.site_algorithm(context)  # actor A handles message 1
    assert clientapp.site_algorithm(context) is first  # and message 2: its algorithm is current

    monkeypatch.setattr(clientapp, "ALGORITHMS", actor_b)  # actor B handles message 3 and trains the site
    trained = clientapp.site_algorithm(context)
    assert trained is not first
    private = trained.private_state()
    key = next(k for k in private if k.endswith("weight"))
    private[key] = private[key] + 1.0
    context.state[clientapp.PRIVATE_KEY] = ArrayRecord(private)  # what the handler leaves in the node's state

    monkeypatch.setattr(clientapp, "ALGORITHMS", actor_a)  # back on actor A for message 4: it has not seen message 3
    current = clientapp.site_algorithm(context)
    assert current is not first
    torch.testing.assert_close(current.private_state()[key], private[key])
    assert clientapp.site_algorithm(context) is current


def test_the_run_config_is_parsed_once_per_run(tmp_path, monkeypatch):
    parsed = []
    monkeypatch.setattr(node_settings, "config_from_run_config",
                        lambda run_config: parsed.append(run_config) or build_config("tiny"))
    node = {"site": "knee", "joint": "knee", "data-dir": str(tmp_path), "threads": 1}
    run_config = {"preset": "tiny", "sites-json": "[]"}
    contexts = [Context(run_id=11, node_id=1, node_config=node, state=RecordDict(), run_config=dict(run_config))
                for _ in range(3)]  # one context per message, as Flower builds them
    configs = {id(node_settings.site_config(c)) for c in contexts}
    assert len(parsed) == 1 and len(configs) == 1
    other_run = Context(run_id=12, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
    assert node_settings.site_config(other_run).train.num_threads == 1 and len(parsed) == 2


def test_a_site_with_too_few_evaluation_cases_replies_without_metrics_and_says_why(tmp_path, write_dataset,
                                                                                   monkeypatch):
    """The Flower side of the policy's min_eval_cases: no metric record, no result; the site record says why."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_eval_cases: 2\n", encoding="utf-8")
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(write_dataset()), "state-dir": str(tmp_path / "s"),
            "threads": 1, "policy": str(policy)}  # a dataset with one test case
    context = Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config={"preset": "tiny"})
    monkeypatch.setattr(clientapp, "ALGORITHMS", SiteAlgorithmCache())
    shared = clientapp.site_algorithm(context).trainer.shared_state()
    metadata = Metadata(run_id=7, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=0.0, ttl=60.0, message_type=MessageType.EVALUATE)
    msg = Message(content=RecordDict({"arrays": ArrayRecord(shared), "config": ConfigRecord({"server-round": 1})}),
                  metadata=metadata)
    reply = clientapp.evaluate(msg, context)
    assert "metrics" not in reply.content and "result-json" not in reply.content["site"]
    (why,) = json.loads(reply.content["site"]["refusals-json"])
    assert "min_eval_cases (2)" in why and str(tmp_path) not in why


def test_the_sites_own_split_and_device_come_from_its_node_config_never_from_the_run(tmp_path):
    node = {"site": "ankle", "joint": "ankle", "data-dir": str(tmp_path), "folds": 5, "fold": 3, "device": "cpu"}
    own = node_settings.site_settings(node).own
    assert (own.folds, own.fold, own.device) == (5, 3, "cpu")
    assert node_settings.site_settings({**node, "folds": 1, "fold": 0}).own == SiteOwnValues(device="cpu")
    with pytest.raises(PedsegError, match="node config: .*fold"):
        node_settings.site_settings({**node, "fold": 5})
