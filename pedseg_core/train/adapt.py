"""A model for a hospital that did not take part: the federation's final shared filters plus a few of the new
site's labelled cases -> the site's own norms and head (the filters frozen, or briefly fine-tuned) -> a complete
checkpoint for `pedseg predict`.

The new site is one more domain, trained exactly as a site trains in a round (`SiteTrainer.train_round`: THE
training loop, its augmentation, its poly schedule over the adaptation's steps), with the shared filters taken
from `global_final.pt` and, unless `fine_tune_shared`, left out of the optimization. The loss is the segmentation
loss (plus the in-batch contrastive term with projection heads): the federation's shape prior is not in its
shared weights. Where the federation pooled a head over the sites of this joint (domain-wise aggregation), that
head is the starting point.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import Tensor

from pedseg_core.config import PedsegConfig, config_from_dict
from pedseg_core.errors import PedsegError
from pedseg_core.model.checkpoint import SHARED_FORMAT
from pedseg_core.model.partition import load_partial_state
from pedseg_core.torch_files import load_torch_file
from pedseg_core.train.run_dir import RunDir
from pedseg_core.train.site import SiteTrainer

MODEL_FILE = "final.pt"  # OUT/checkpoints/final.pt, as a centralized run writes it


def load_shared_weights(path: Path) -> tuple[dict[str, Tensor], PedsegConfig, dict[str, dict[str, Tensor]], int]:
    """global_final.pt -> (shared state dict, the federation's config, pooled heads by joint, its last round)."""
    payload = load_torch_file(path, "federation weights")
    if not isinstance(payload, dict) or payload.get("format") != SHARED_FORMAT:
        raise PedsegError(f"{path}: not a federation's shared weights (expected format {SHARED_FORMAT}; "
                          f"a federated run writes RUN/checkpoints/global_final.pt)")
    cfg = config_from_dict(payload["config"])
    if cfg.scheme == "shared":
        raise PedsegError(f"{path}: a `shared` federation has no site-specific layers to adapt: its "
                          f"checkpoints/final.pt is already the complete model")
    return payload["shared_state_dict"], cfg, payload.get("joint_heads") or {}, int(payload.get("round", 0))


def adapt_site(weights: Path, site: str, joint: str, data_dir: Path, out: Path, steps: int,
               cases: int | None = None, fine_tune_shared: bool = False) -> dict:
    """Train the new site's norms and head on at most `cases` of its training cases for `steps` steps, evaluate
    on its evaluation cases, and write OUT (config.yaml, metrics.jsonl, results.json, checkpoints/final.pt).
    Returns results.json."""
    shared, cfg, heads, federation_round = load_shared_weights(Path(weights))
    if steps < 1 or (cases is not None and cases < 1):
        raise PedsegError("adapt needs --steps >= 1 and --cases >= 1")
    cfg.train.steps_per_epoch = steps
    run = RunDir(Path(out)).create(cfg)
    trainer = SiteTrainer(site, joint, Path(data_dir), cfg)
    if cases is not None:
        if cases > len(trainer.train_cases):
            raise PedsegError(f"{data_dir}: --cases {cases}, but the dataset has {len(trainer.train_cases)} "
                              f"training cases")
        trainer.train_cases = trainer.train_cases[:cases]
    try:
        load_partial_state(trainer.model, shared)
    except (KeyError, ValueError) as error:
        raise PedsegError(f"{weights}: its shared weights do not fit the model of its own config ({error})") from None
    if joint in heads:
        load_partial_state(trainer.model, heads[joint])
    if not fine_tune_shared:  # Adam skips parameters without gradients: only the norms and the head move
        for name, param in trainer.model.named_parameters():
            param.requires_grad_(name not in shared)
    start = time.perf_counter()
    new_shared, _, stats = trainer.train_round(shared, 1, 1)
    train_time = time.perf_counter() - start
    run.log({"stage": "adapt", **stats, "cases": len(trainer.train_cases), "fine_tune_shared": fine_tune_shared,
             "time_s": round(train_time, 3)})
    result = trainer.evaluate(new_shared, run.path / "predictions" / site)
    trainer.save_model(run.checkpoints / MODEL_FILE, federation_round)
    results = {"mode": "adapted", "scheme": cfg.scheme, "strategy": None, "rounds": federation_round,
               "weights": str(Path(weights).resolve()), "fine_tune_shared": fine_tune_shared,
               "train_cases": [c.case_id for c in trainer.train_cases], "steps": steps,
               "sites": {site: result}, "mean_dice": result["mean_dice"]}
    run.write_results(results)
    return results
