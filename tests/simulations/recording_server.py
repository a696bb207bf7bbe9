"""pedseg's ServerApp with a recorder between it and Flower's Grid: every reply the server side receives is
kept (its array records, and SecAgg+'s masked vectors decoded) in RUN/received.pt, for
test_secure_aggregation.py (see `recording_app_dir` there)."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import ServerApp

from server.app import main as pedseg_main

app = ServerApp()


class RecordingGrid:
    def __init__(self, grid) -> None:
        self.grid, self.received = grid, []

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def pull_messages(self, message_ids):
        """Flower's pull, recording every reply (pedseg's PromptGrid pulls through here, not send_and_receive)."""
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_error():
                continue
            content = reply.content
            masked = []
            if RECORD_KEY_CONFIGS in content.config_records:
                masked = [torch.from_numpy(bytes_to_ndarray(b))
                          for b in content[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS, [])]
            self.received.append({"node": reply.metadata.src_node_id, "type": reply.metadata.message_type,
                                  "arrays": {n: r.to_torch_state_dict() for n, r in content.array_records.items()},
                                  "masked": masked})
        return replies


@app.main()
def main(grid, context) -> None:
    recording = RecordingGrid(grid)
    try:
        pedseg_main(recording, context)
    finally:
        torch.save(recording.received, Path(str(context.run_config["out-dir"])) / "received.pt")
