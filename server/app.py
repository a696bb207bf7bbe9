"""The Flower ServerApp: FedAvg or FedProx over the shared weights, run directory on the server's disk.

Run config (pyproject `[tool.flwr.app.config]`, overridable with `flwr run --run-config`): see
`pedseg_core.config.config_from_run_config`, plus `out-dir` (where the run directory is written; default
`pedseg-runs/run-<run id>` under the SuperLink's working directory).
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from pedseg_core.config import CONTRASTIVE_SCHEMES, UNION_LABEL_SCHEMES, PedsegConfig, config_from_run_config
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.model.checkpoint import DomainSpec, save_checkpoint, save_shared_checkpoint
from pedseg_core.model.partition import split_for_scheme
from pedseg_core.model.unet import build_model
from pedseg_core.train.run_dir import RunDir
from server.prior_stage import collect_union_labels, train_prior
from server.quorum import QuorumNotReached
from server.strategy import SharedFedAvg, SharedFedProx

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(dict(context.run_config))
    out = str(context.run_config.get("out-dir", "")) or f"pedseg-runs/run-{context.run_id}"
    run = RunDir(Path(out)).create(cfg)
    try:
        federate(grid, cfg, run)
    except QuorumNotReached as err:
        run.log({"event": "run-ended", "reason": str(err)})  # metrics.jsonl says why, then the run fails
        raise


def federate(grid: Grid, cfg: PedsegConfig, run: RunDir) -> None:
    """The federated run: the label query and the prior's stage when the scheme needs them, then the rounds,
    checkpoints and results.json."""
    fed = cfg.federation
    num_rounds = fed.num_rounds(cfg.train)

    projection = cfg.contrastive if cfg.scheme in CONTRASTIVE_SCHEMES else None
    nodes = {"min_train_nodes": fed.min_nodes, "min_evaluate_nodes": fed.min_nodes,
             "min_available_nodes": fed.min_nodes, "quorum_timeout": fed.quorum_timeout}
    if fed.strategy == "fedprox":
        strategy = SharedFedProx(fraction_train=fed.fraction_train, proximal_mu=fed.proximal_mu, **nodes)
    else:
        strategy = SharedFedAvg(fraction_train=fed.fraction_train, **nodes)
    strategy.setup_run(run, fed.evaluate_every, num_rounds)
    head_classes = 2  # the heads' sizes do not matter when heads stay private
    if cfg.scheme in UNION_LABEL_SCHEMES:  # the joints' labels, for the shared head or the prior's masks
        union, offsets = collect_union_labels(grid, fed.min_nodes, fed.quorum_timeout, fed.round_timeout)
        strategy.use_union_labels(offsets, len(union))
        head_classes = len(union)
    if cfg.scheme == "full":  # stage 1: the anatomical prior, learned by all sites before the segmentation
        prior = train_prior(grid, cfg, run, offsets, len(union))
        torch.save({"union_labels": union, "state_dict": prior.to_torch_state_dict()},
                   run.checkpoints / "shape_prior.pt")
        strategy.use_prior(prior)
    # The initial global weights (random or ImageNet encoder): the shared part, i.e. all of the `shared` scheme.
    shared, _ = split_for_scheme(build_model([head_classes], cfg.model, projection), cfg.scheme)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        save_shared_checkpoint(run.checkpoints / "global_last.pt", arrays.to_torch_state_dict(), cfg, server_round)
        strategy.end_round(server_round)
        return None

    result = strategy.start(grid, ArrayRecord(shared), num_rounds=num_rounds, timeout=fed.round_timeout,
                            train_config=ConfigRecord({}), evaluate_fn=end_of_round)
    save_shared_checkpoint(run.checkpoints / "global_final.pt", result.arrays.to_torch_state_dict(), cfg,
                           num_rounds, joint_heads=strategy.joint_heads)
    if cfg.scheme == "shared":  # the whole model is global: a checkpoint `pedseg predict --joint shared` reads
        model = build_model([head_classes], cfg.model)
        model.load_state_dict(result.arrays.to_torch_state_dict())
        save_checkpoint(run.checkpoints / "final.pt", model, cfg, [DomainSpec("shared", "shared", union)])
    sites = dict(sorted(strategy.last_evaluation.items()))
    run.write_results({"mode": "federated", "scheme": cfg.scheme, "strategy": fed.strategy, "rounds": num_rounds,
                       "sites": sites, "mean_dice": mean_or_none(s["mean_dice"] for s in sites.values())})
