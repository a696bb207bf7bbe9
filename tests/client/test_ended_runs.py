"""The SuperNode's ended-runs patch (`flower_common.flower_patches`) on Flower's own SuperNode code: a message
whose run ends while its arrays are pulled (the SuperLink answers "Run is finished", as after a restart) leaves an
open task in flwr 1.41 as shipped, and none with the patch, so a site's warm worker never claims it."""

import time

import flwr.supernode.start_client_internal as supernode_loop
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.common.constant import Status
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.inflatable.inflatable_utils import pull_objects
from flwr.supercore.object_store.object_store_factory import ObjectStoreFactory
from flwr.supercore.run import Run, RunNotRunningException
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

from flower_common.flower_patches import SUPERNODE, failing_when_the_run_ended

RUN_ID = 7


def train_message() -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((4, 4), dtype=np.float32))})})
    metadata = Metadata(run_id=RUN_ID, message_id="", src_node_id=1, dst_node_id=2, reply_to_message_id="",
                        group_id="3", created_at=time.time(), ttl=600.0, message_type="train")
    message = Message(metadata=metadata, content=content)
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def receive_while_the_run_ends() -> InMemoryNodeState:
    """Flower's SuperNode receiving one message whose array pulls the SuperLink refuses: the run has ended."""
    state = InMemoryNodeState(ObjectStoreFactory().store())
    state.set_node_id(2)
    state.store_run(Run.create_empty(RUN_ID))
    message = train_message()

    def refused(run_id: int, object_id: str) -> bytes:
        raise RunNotRunningException

    supernode_loop._pull_and_store_message(
        state, ObjectStoreFactory().store(), {}, lambda: (message, get_object_tree(message)),
        get_run=None, get_fab=None, pull_object=refused, confirm_message_received=None, trusted_entities=None)
    return state


def open_tasks(state: InMemoryNodeState) -> list:
    return [t for t in state.get_tasks(run_ids=[RUN_ID]) if t.status.status != Status.FINISHED]


def test_flwr_as_shipped_leaves_the_task_open(monkeypatch):
    """Fails when a Flower upgrade fixes it: then the patch `supernode-ended-runs-fail-their-task` can go."""
    monkeypatch.setattr(supernode_loop, "pull_objects", pull_objects)  # Flower's own, whatever ran before
    (task,) = open_tasks(receive_while_the_run_ends())
    assert task.type == TaskType.CLIENT_APP


def test_with_the_fix_the_task_is_finished_and_the_message_gone(monkeypatch):
    monkeypatch.setattr(supernode_loop, "pull_objects", pull_objects)  # restored after the test
    (patch,) = [p for p in SUPERNODE if p.name == "supernode-ended-runs-fail-their-task"]
    patch.apply()
    state = receive_while_the_run_ends()
    assert open_tasks(state) == []
    (task,) = state.get_tasks(run_ids=[RUN_ID])
    assert task.status.sub_status == "failed" and "its run ended" in task.status.details
    assert state.get_messages_legacy(run_ids=[RUN_ID], is_reply=False) == []


def test_other_pull_failures_are_left_as_they_were():
    def pull_objects(*args, **kwargs):
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError, match="slow"):
        failing_when_the_run_ended(pull_objects)([], None)
