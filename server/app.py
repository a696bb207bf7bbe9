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

from pedseg_core.config import CONTRASTIVE_SCHEMES, config_from_run_config
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.model.checkpoint import save_shared_checkpoint
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import build_model
from pedseg_core.train.run_dir import RunDir
from server.prior_stage import collect_union_labels, train_prior
from server.strategy import SharedFedAvg, SharedFedProx

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(dict(context.run_config))
    fed = cfg.federation
    out = str(context.run_config.get("out-dir", "")) or f"pedseg-runs/run-{context.run_id}"
    run = RunDir(Path(out)).create(cfg)
    num_rounds = fed.num_rounds(cfg.train)

    # The initial shared weights (random or ImageNet encoder); head sizes do not matter: heads stay private.
    projection = cfg.contrastive if cfg.scheme in CONTRASTIVE_SCHEMES else None
    shared, _ = split_state_dict(build_model([2], cfg.model, projection))
    nodes = {"min_train_nodes": fed.min_nodes, "min_evaluate_nodes": fed.min_nodes,
             "min_available_nodes": fed.min_nodes}
    if fed.strategy == "fedprox":
        strategy = SharedFedProx(fraction_train=fed.fraction_train, proximal_mu=fed.proximal_mu, **nodes)
    else:
        strategy = SharedFedAvg(fraction_train=fed.fraction_train, **nodes)
    strategy.setup_run(run, fed.evaluate_every, num_rounds)
    if cfg.scheme == "full":  # stage 1: the anatomical prior, learned by all sites before the segmentation
        union, offsets = collect_union_labels(grid, fed.min_nodes, fed.round_timeout)
        prior = train_prior(grid, cfg, run, offsets, len(union))
        torch.save({"union_labels": union, "state_dict": prior.to_torch_state_dict()},
                   run.checkpoints / "shape_prior.pt")
        strategy.use_prior(prior, offsets, len(union))

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        save_shared_checkpoint(run.checkpoints / "global_last.pt", arrays.to_torch_state_dict(), cfg, server_round)
        strategy.end_round(server_round)
        return None

    result = strategy.start(grid, ArrayRecord(shared), num_rounds=num_rounds, timeout=fed.round_timeout,
                            train_config=ConfigRecord({}), evaluate_fn=end_of_round)
    save_shared_checkpoint(run.checkpoints / "global_final.pt", result.arrays.to_torch_state_dict(), cfg,
                           num_rounds, joint_heads=strategy.joint_heads)
    sites = dict(sorted(strategy.last_evaluation.items()))
    run.write_results({"mode": "federated", "scheme": cfg.scheme, "strategy": fed.strategy, "rounds": num_rounds,
                       "sites": sites, "mean_dice": mean_or_none(s["mean_dice"] for s in sites.values())})
