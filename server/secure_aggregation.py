"""Secure aggregation of the shared weights with Flower's SecAgg+ (`SecAggPlusWorkflow`): the server learns only
the sites' mean update, never one site's.

Flower 1.41-1.42 runs SecAgg+ only as a legacy workflow; no Message-API strategy speaks it. So this is a Grid
that pedseg's Message-API strategies (and the prior's FedAvg) are started on: evaluation and query messages
pass through, and each round's training messages go through the four SecAgg+ stages (setup, key sharing,
masked vectors, unmasking) instead of one send. The stage that trains sends each site exactly the message the
strategy made for it (arrays, config, prototypes, pooled head, prior); at the site,
`client.secure_aggregation_mod` masks the shared-weight update (its shared weights minus the global ones)
inside Flower's `secaggplus_mod`. After unmasking, every reply carries the same ARRAYS: the global weights plus
the mean update, cast to the global dtypes, so the strategy's weighted mean of them is that mean.

Every site's update has weight 1 in the masked sum: the mean is unweighted. pedseg's segmentation rounds weight
every site alike anyway (each reports the slices of its planned steps); the prior's stage 1, which FedAvg
weights by each site's mask slices, becomes a plain mean under secure aggregation.

What it covers: the shared weights of every training round (segmentation and prior). What it does not:
prototypes, pooled heads, metrics, the piggy-backed evaluation and `num-examples` travel in clear (as without
SecAgg+), and the per-site update checks (norms, finite values) and robust aggregation cannot see single updates.
Flower's protocol trusts an honest-but-curious server (it relays the sites' public keys unauthenticated);
`client.secure_aggregation_mod` adds the checks Flower's client lacks (see
docs/decisions/0004-secure-aggregation-legacy-workflow.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from pedseg_core.protocol import ARRAYS, CONFIG, SERVER_ROUND

FITRES_PREFIX = "fitres."  # the legacy records SecAgg+ needs in a masked reply (client.secure_aggregation_mod)
CLIPPING_RANGE = 8.0  # an update's values are clipped to +-this before quantization (the site refuses beyond)
RECONSTRUCTION_THRESHOLD = 0.51  # of the sites: a strict majority must survive to unmask (2 t > n)


class _Tap:
    """The Grid as SecAggPlusWorkflow sees it, keeping every stage's replies."""

    def __init__(self, grid: Grid) -> None:
        self.grid, self.replies = grid, []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.append(replies)
        return replies


class _MaskedMean:
    """The legacy strategy SecAggPlusWorkflow asks: it samples the round's nodes and keeps the unmasked mean."""

    def __init__(self, proxies: list[GridClientProxy]) -> None:
        self.proxies, self.mean, self.sites = proxies, None, []

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, FitIns(Parameters(tensors=[], tensor_type=""), {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.sites = [proxy.node_id for proxy, _ in results]
        return None, {}  # nothing for the workflow's own state: the caller takes the mean


class _PedsegSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ whose training stage sends each node the message pedseg's strategy made for it."""

    def __init__(self, contents: dict[int, RecordDict], **kwargs) -> None:
        super().__init__(**kwargs)
        self.contents = contents

    def setup_stage(self, grid, context, state) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {node: self.contents[node] for node in state.nid_to_fitins}
        return ok


class SecureAggregationGrid:
    """A Grid whose training rounds go through SecAgg+; `report` describes the last one (for metrics.jsonl)."""

    def __init__(self, grid: Grid, run_id: int) -> None:
        self.grid, self.run_id = grid, run_id
        self.report: dict = {}

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.TRAIN:
            return list(self.grid.send_and_receive(messages, timeout=timeout))
        started = time.perf_counter()
        global_arrays = messages[0].content[ARRAYS]
        contents = {m.metadata.dst_node_id: m.content for m in messages}
        collector = _MaskedMean([GridClientProxy(node, self.grid, self.run_id) for node in contents])
        context = LegacyContext(Context(self.run_id, 0, {}, RecordDict(), {}), strategy=collector,
                                client_manager=SimpleClientManager())
        server_round = int(messages[0].content[CONFIG][SERVER_ROUND])
        context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state[MAIN_PARAMS_RECORD] = ArrayRecord()
        tap = _Tap(self.grid)
        workflow = _PedsegSecAggPlus(contents, num_shares=1.0, reconstruction_threshold=RECONSTRUCTION_THRESHOLD,
                                     max_weight=1.0, clipping_range=CLIPPING_RANGE, timeout=timeout)
        workflow(tap, context)
        self.report = {"sites": len(collector.sites), "asked": len(contents),
                       "seconds": round(time.perf_counter() - started, 2)}
        if collector.mean is None or len(tap.replies) < 3:
            self.report["halted"] = "too few sites stayed to unmask (a strict majority must)"
            log(WARNING, "secure aggregation halted in round %s: %s", server_round, self.report["halted"])
            return [m for m in tap.replies[-1] if m.has_error()] if tap.replies else []
        mean = dict(zip(sorted(global_arrays.keys()), collector.mean))
        masked = set(collector.sites)
        replies = []
        for reply in tap.replies[2]:  # the training stage's replies: metrics, site record, prototypes, head
            if not reply.has_error():
                if reply.metadata.src_node_id not in masked:
                    continue
                _unmasked_reply(reply.content, global_arrays, mean)
            replies.append(reply)
        return replies


def _unmasked_reply(content: RecordDict, global_arrays: ArrayRecord, mean: dict[str, np.ndarray]) -> None:
    """A masked reply as the strategy reads it: the SecAgg+ and legacy records out, ARRAYS = global + mean."""
    for name in [n for n in content.keys() if n.startswith(FITRES_PREFIX) or n == RECORD_KEY_CONFIGS]:
        del content[name]
    arrays = {}
    for key in global_arrays.keys():
        base = global_arrays[key].numpy()
        arrays[key] = Array((base + mean[key]).astype(base.dtype))
    content[ARRAYS] = ArrayRecord(arrays)
