"""Centralized training (`pedseg train`): all joints' data in one place, domain-balanced batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pedseg_core.config import IMPLEMENTED_SCHEMES, PedsegConfig
from pedseg_core.data.augment import SliceAugmentation
from pedseg_core.data.loading import load_slice_set, split_cases
from pedseg_core.data.nnunet import Case, RawDataset, read_dataset
from pedseg_core.data.sampling import domain_balanced_batches
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import DatasetError, PedsegError
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.evaluate.site import evaluate_site
from pedseg_core.model.checkpoint import DomainSpec, save_checkpoint
from pedseg_core.model.unet import build_model
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.run_dir import RunDir
from pedseg_core.train.schedule import make_optimizer


@dataclass
class JointData:
    """One joint's validated dataset and its split."""

    joint: str
    dataset: RawDataset
    train: list[Case]
    eval: list[Case]

    @property
    def domain(self) -> DomainSpec:
        return DomainSpec(name=self.joint, joint=self.joint, labels=dict(self.dataset.labels))


def load_joints(data: dict[str, Path], cfg: PedsegConfig) -> list[JointData]:
    """Validate every dataset (all problems of all datasets reported together), then split each."""
    problems = [p for path in data.values() for p in check_dataset(Path(path)).problems]
    if problems:
        raise DatasetError(list(data.values()), problems)
    joints = []
    for joint, path in data.items():
        dataset = read_dataset(Path(path))
        train, held = split_cases(dataset, cfg.data.validation_fraction, cfg.train.seed)
        joints.append(JointData(joint, dataset, train, held))
    return joints


def seed_everything(seed: int, num_threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def train_centralized(data: dict[str, Path], cfg: PedsegConfig, out: Path, progress: bool = True) -> dict:
    """Train one multi-domain model over all `data` joints; write the run directory; return results.json."""
    if cfg.scheme not in IMPLEMENTED_SCHEMES:
        raise PedsegError(f"scheme '{cfg.scheme}' is not available yet (available: "
                          f"{', '.join(IMPLEMENTED_SCHEMES)})")
    joints = load_joints(data, cfg)
    run = RunDir(out).create(cfg)
    seed_everything(cfg.train.seed, cfg.train.num_threads)

    slice_sets = [load_slice_set(j.train, cfg.data, desc=f"load {j.joint}" if progress else None)
                  for j in joints]
    model = build_model([j.dataset.num_classes for j in joints], cfg.model)
    optimizer = make_optimizer(model, cfg.train.learning_rate, cfg.train.weight_decay)
    augment = SliceAugmentation(cfg.data, cfg.train.seed) if cfg.data.augment else None
    batches = domain_balanced_batches(slice_sets, cfg.train.batch_size,
                                      torch.Generator().manual_seed(cfg.train.seed), augment,
                                      cfg.data.foreground_fraction)
    domains = [j.domain for j in joints]
    total = cfg.train.epochs * cfg.train.steps_per_epoch

    for epoch in range(cfg.train.epochs):
        start = time.perf_counter()
        plan = StepPlan(cfg.train.steps_per_epoch, epoch * cfg.train.steps_per_epoch, total)
        stats = train_steps(model, batches, optimizer, cfg.train, plan,
                            progress=f"epoch {epoch + 1}/{cfg.train.epochs}" if progress else None)
        seconds = time.perf_counter() - start
        run.log({"epoch": epoch + 1, **stats, "time_s": round(seconds, 3),
                 "slices_per_s": round(stats["slices"] / seconds, 2)})
        save_checkpoint(run.checkpoints / "last.pt", model, cfg, domains, epoch=epoch + 1)
        if progress:
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
                  f"{stats['slices'] / seconds:.1f} slices/s", flush=True)
    save_checkpoint(run.checkpoints / "final.pt", model, cfg, domains, epoch=cfg.train.epochs)

    sites = {}
    for d, j in enumerate(joints):
        sites[j.joint] = evaluate_site(model, d, j.joint, j.eval, j.domain.bones, cfg,
                                       pred_dir=run.path / "predictions" / j.joint)
    results = {"mode": "centralized", "scheme": cfg.scheme, "strategy": None, "rounds": cfg.train.epochs,
               "sites": sites, "mean_dice": mean_or_none(s["mean_dice"] for s in sites.values())}
    run.write_results(results)
    return results

