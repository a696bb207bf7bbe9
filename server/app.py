"""The Flower ServerApp: `server.strategy.SharedWeightsStrategy` over the shared weights (FedAvg or a robust rule,
FedProx's term as an option), run directory on the server's disk.

Run config (pyproject `[tool.flwr.app.config]`, overridable with `flwr run --run-config`): see
`flower_common.run_config`, plus `out-dir` (where the run directory is written; default
`pedseg-runs/run-<run id>` under the SuperLink's working directory) and `resume-from` (a run directory whose
run this one continues from its last completed round, with the same settings; see `server.run_state`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flower_common.flower_patches import SERVERAPP, apply_flower_patches
from flower_common.run_config import config_from_run_config
from pedseg_core.config import CONTRASTIVE_SCHEMES, UNION_LABEL_SCHEMES, PedsegConfig
from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.model.checkpoint import DomainSpec, save_checkpoint, save_shared_checkpoint
from pedseg_core.model.partition import split_for_scheme
from pedseg_core.model.unet import build_model
from pedseg_core.train.run_dir import RunDir
from server.prior_stage import train_prior
from server.prompt_grid import PromptGrid
from server.run_state import RunState, StateWriter, load_run_state
from server.secure_aggregation import SecureAggregationGrid
from server.site_query import query_sites, union_labels
from server.strategy import SharedWeightsStrategy
from server.update_checks import training_examples

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    apply_flower_patches(SERVERAPP)  # Flower's internals patched here, or stock Flower with one log line
    cfg = config_from_run_config(dict(context.run_config))
    resume = str(context.run_config.get("resume-from", ""))
    if resume:
        state = load_run_state(Path(resume))
        run = RunDir(Path(resume)).reopen(cfg, state.metrics_bytes)
        run.log({"event": "resumed", "after_round": state.completed_round, "flower_run": context.run_id})
    else:
        state = RunState(federation_run=str(context.run_id), completed_round=0, arrays={}, strategy={})
        out = str(context.run_config.get("out-dir", "")) or f"pedseg-runs/run-{context.run_id}"
        run = RunDir(Path(out)).create(cfg)
    grid = PromptGrid(grid)  # replies taken as they arrive, not every 3 s
    if cfg.federation.secure_aggregation:  # every training round through SecAgg+
        grid = SecureAggregationGrid(grid, context.run_id)
    try:
        federate(grid, cfg, run, state)
    except PedsegError as err:
        run.log({"event": "run-ended", "reason": str(err)})  # metrics.jsonl says why, then the run fails
        raise


def federate(grid: Grid, cfg: PedsegConfig, run: RunDir, state: RunState) -> None:
    """The federated run from `state` on (a new run: nothing done): the site query and the prior's stage when
    the scheme needs them, then the rounds, a server state after each, checkpoints and results.json."""
    fed = cfg.federation
    num_rounds = fed.num_rounds(cfg.train)

    projection = cfg.contrastive if cfg.scheme in CONTRASTIVE_SCHEMES else None
    done = state.completed_round
    sites = {}
    if cfg.scheme in UNION_LABEL_SCHEMES or done:  # who is who (a resumed run pools heads from its first round)
        sites = query_sites(grid, fed.min_nodes, fed.quorum_timeout, fed.round_timeout)
        if cfg.scheme in UNION_LABEL_SCHEMES and state.union is None:  # the shared head's or the prior's labels
            state.union, state.offsets = union_labels(sites)
    head_classes = 2 if state.union is None else len(state.union)  # heads' sizes do not matter when they stay private
    if cfg.scheme == "full" and state.prior is None:  # stage 1: the prior, learned by all sites first
        state.prior = train_prior(grid, cfg, run, state.offsets, len(state.union)).to_torch_state_dict()
        torch.save({"union_labels": state.union, "state_dict": state.prior}, run.checkpoints / "shape_prior.pt")
    if not state.arrays:  # the initial global weights (random or ImageNet encoder): the shared part
        state.arrays, _ = split_for_scheme(build_model([head_classes], cfg.model, projection), cfg.scheme)
    strategy = SharedWeightsStrategy(fed, run, state, num_rounds,
                                     sites={node: (s.site, s.joint) for node, s in sites.items()},
                                     secure=grid if isinstance(grid, SecureAggregationGrid) else None,
                                     expected_examples=training_examples(cfg))

    writer = StateWriter(run.path)

    def end_of_round(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """After each round (Flower counts from 1 in this run; round 0: before the first): its metrics line,
        then the state a resume continues from."""
        if flower_round == 0 and done:
            return None  # the state of round `done` is on disk already
        state.completed_round = flower_round + done
        strategy.end_round(state.completed_round)
        state.arrays, state.strategy = arrays.to_torch_state_dict(), strategy.state_dict()
        state.metrics_bytes = run.metrics_bytes()
        writer.save(state)
        return None

    if isinstance(grid, PromptGrid):  # under SecAgg+ (its own grid) replies are neither packed nor fp16
        grid.on_reply = strategy.wire.decoded
    try:
        strategy.start(grid, ArrayRecord(state.arrays), num_rounds=num_rounds - done, timeout=fed.round_timeout,
                       train_config=ConfigRecord({}), evaluate_fn=end_of_round)
    finally:
        writer.close()  # the last round's state is on disk before results.json says the run is complete
    save_shared_checkpoint(run.checkpoints / "global_final.pt", state.arrays, cfg, num_rounds,
                           joint_heads=strategy.pools.joint_heads)
    if cfg.scheme == "shared":  # the whole model is global: a checkpoint `pedseg predict --joint shared` reads
        model = build_model([head_classes], cfg.model)
        model.load_state_dict(state.arrays)
        save_checkpoint(run.checkpoints / "final.pt", model, cfg, [DomainSpec("shared", "shared", state.union)])
    sites = dict(sorted(strategy.evaluation.last.items()))
    run.write_results({"mode": "federated", "scheme": cfg.scheme, "strategy": fed.strategy, "rounds": num_rounds,
                       "sites": sites, "mean_dice": mean_or_none(s["mean_dice"] for s in sites.values())})
