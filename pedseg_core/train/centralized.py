"""Centralized training (`pedseg train`): all joints' data in one place, one of the paper's schemes.

individual    one model per joint, trained on that joint alone
transfer      per joint: a model trained on the other joints (first half of the budget), fine-tuned on it
shared        one network, nothing domain-specific: one norm set, one head over the union of all bones
multi-domain  domain-specific norms and heads
contrastive   multi-domain + the multi-scale supervised contrastive regularization
full          contrastive + the multi-joint anatomical prior (a shape auto-encoder learned first on the pooled
              masks, then frozen); the encoder starts from ImageNet whenever model.encoder_weights is set
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pedseg_core.config import CONTRASTIVE_SCHEMES, PedsegConfig
from pedseg_core.data.augment import SliceAugmentation
from pedseg_core.data.loading import load_slice_set, split_cases
from pedseg_core.data.nnunet import Case, RawDataset, read_dataset
from pedseg_core.data.sampling import SliceSet, domain_balanced_batches
from pedseg_core.data.union_labels import to_union_labels, union_label_space, union_to_joint_lut
from pedseg_core.data.validate import check_dataset
from pedseg_core.device import resolve_device, to_cpu
from pedseg_core.errors import DatasetError, PedsegError
from pedseg_core.evaluate.metrics import mean_or_none
from pedseg_core.evaluate.site import evaluate_site
from pedseg_core.losses.multiscale import MultiScaleContrastive
from pedseg_core.model.checkpoint import DomainSpec, save_checkpoint
from pedseg_core.model.partition import load_partial_state, split_state_dict
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss
from pedseg_core.model.unet import MultiDomainUNet, build_model
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.run_dir import RunDir
from pedseg_core.train.schedule import make_optimizer
from pedseg_core.train.shape_prior import train_shape_autoencoder


@dataclass
class JointData:
    """One joint's validated dataset, its split and (once loaded) its training slices."""

    joint: str
    dataset: RawDataset
    train: list[Case]
    eval: list[Case]
    slices: SliceSet | None = None

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
        train, held = split_cases(dataset, cfg.data, cfg.train.seed)
        joints.append(JointData(joint, dataset, train, held))
    return joints


def seed_everything(seed: int, num_threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


class CentralizedRun:
    """Shared machinery of the schemes: training a model on slice sets for some epochs, logging, evaluating."""

    def __init__(self, joints: list[JointData], cfg: PedsegConfig, run: RunDir, progress: bool) -> None:
        self.joints, self.cfg, self.run, self.progress = joints, cfg, run, progress
        self.device = resolve_device(cfg.train.device)

    def new_model(self, num_classes: Sequence[int]) -> MultiDomainUNet:
        contrastive = self.cfg.scheme in CONTRASTIVE_SCHEMES
        model = build_model(num_classes, self.cfg.model, self.cfg.contrastive if contrastive else None)
        return model.to(self.device)

    def fit(self, model: MultiDomainUNet, slice_sets: list[SliceSet], epochs: range, stage: str,
            domain_map: Sequence[int] | None = None, prior: ShapePriorLoss | None = None) -> None:
        """Train `model` on domain-balanced batches of `slice_sets` for `epochs` (global epoch indices of a
        run-wide schedule of cfg.train.epochs), one metrics.jsonl line per epoch."""
        tc = self.cfg.train
        optimizer = make_optimizer(model, tc.learning_rate, tc.weight_decay)
        augment = SliceAugmentation(self.cfg.data, tc.seed) if self.cfg.data.augment else None
        batches = domain_balanced_batches(slice_sets, tc.batch_size, torch.Generator().manual_seed(tc.seed),
                                          augment, self.cfg.data.foreground_fraction)
        contrastive = MultiScaleContrastive(self.cfg.contrastive) if model.scales else None
        total = tc.epochs * tc.steps_per_epoch
        for epoch in epochs:
            start = time.perf_counter()
            plan = StepPlan(tc.steps_per_epoch, epoch * tc.steps_per_epoch, total)
            label = f"{stage} epoch {epoch + 1}/{tc.epochs}".strip()
            stats = train_steps(model, batches, optimizer, tc, plan, domain_map=domain_map,
                                contrastive=contrastive, prior=prior, progress=label if self.progress else None)
            seconds = time.perf_counter() - start
            self.run.log({"stage": stage or self.cfg.scheme, "epoch": epoch + 1, **stats,
                          "time_s": round(seconds, 3), "slices_per_s": round(stats["slices"] / seconds, 2)})
            if self.progress:
                print(f"{label}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
                      f"{stats['slices'] / seconds:.1f} slices/s", flush=True)

    def slices(self, joint: JointData) -> SliceSet:
        if joint.slices is None:
            joint.slices = load_slice_set(joint.train, self.cfg.data, f"load {joint.joint}" if self.progress else None)
        return joint.slices

    def evaluate(self, model: MultiDomainUNet, domain: int, joint: JointData,
                 label_lut: np.ndarray | None = None) -> dict:
        return evaluate_site(model, domain, joint.joint, joint.eval, joint.domain.bones, self.cfg,
                             self.run.path / "predictions" / joint.joint, label_lut)

    def all_epochs(self) -> range:
        return range(self.cfg.train.epochs)

    # --- the schemes -------------------------------------------------------------------------------------

    def multi_domain(self, prior: ShapePriorLoss | None = None) -> dict[str, dict]:
        model = self.new_model([j.dataset.num_classes for j in self.joints])
        self.fit(model, [self.slices(j) for j in self.joints], self.all_epochs(), "", prior=prior)
        save_checkpoint(self.run.checkpoints / "final.pt", model, self.cfg, [j.domain for j in self.joints])
        return {j.joint: self.evaluate(model, d, j) for d, j in enumerate(self.joints)}

    def individual(self) -> dict[str, dict]:
        sites = {}
        for j in self.joints:
            model = self.new_model([j.dataset.num_classes])
            self.fit(model, [self.slices(j)], self.all_epochs(), j.joint)
            save_checkpoint(self.run.checkpoints / f"{j.joint}.pt", model, self.cfg, [j.domain])
            sites[j.joint] = self.evaluate(model, 0, j)
        return sites

    def transfer(self) -> dict[str, dict]:
        if len(self.joints) < 2:
            raise PedsegError("scheme 'transfer' needs at least two joints (--data twice or more)")
        half = self.cfg.train.epochs // 2
        sites = {}
        for j in self.joints:
            others = [o for o in self.joints if o is not j]
            source = self.new_model([o.dataset.num_classes for o in others])
            self.fit(source, [self.slices(o) for o in others], range(half), f"{j.joint} pretrain")
            model = self.new_model([j.dataset.num_classes])
            load_partial_state(model, split_state_dict(source)[0])
            self.fit(model, [self.slices(j)], range(half, self.cfg.train.epochs), f"{j.joint} finetune")
            save_checkpoint(self.run.checkpoints / f"{j.joint}.pt", model, self.cfg, [j.domain])
            sites[j.joint] = self.evaluate(model, 0, j)
        return sites

    def shared(self) -> dict[str, dict]:
        """One head over the union of bones ("joint/bone"), one set of norms; each joint's labels shifted
        into the union, and predictions mapped back (other joints' bones count as background)."""
        union, offsets = self.union()
        luts, shifted = [], []
        for j, offset in zip(self.joints, offsets):
            luts.append(union_to_joint_lut(len(union), offset, j.dataset.num_classes))
            s = self.slices(j)
            shifted.append(SliceSet(s.images, to_union_labels(s.labels, offset).to(torch.uint8)))
        model = self.new_model([len(union)])
        self.fit(model, shifted, self.all_epochs(), "", domain_map=[0] * len(self.joints))
        save_checkpoint(self.run.checkpoints / "final.pt", model, self.cfg,
                        [DomainSpec(name="shared", joint="shared", labels=union)])
        return {j.joint: self.evaluate(model, 0, j, lut) for j, lut in zip(self.joints, luts)}

    def union(self) -> tuple[dict[str, int], list[int]]:
        return union_label_space([j.dataset.labels for j in self.joints], [j.joint for j in self.joints])

    def full(self) -> dict[str, dict]:
        """The shape auto-encoder learns the pooled masks of all joints first, then the contrastive
        multi-domain network trains with the frozen prior."""
        union, offsets = self.union()
        autoencoder = ShapeAutoEncoder(len(union), self.cfg.prior.channels).to(self.device)
        start = time.perf_counter()
        stats = train_shape_autoencoder(autoencoder, [self.slices(j).labels for j in self.joints], offsets,
                                        self.cfg.prior, self.cfg.train.seed)
        self.run.log({"stage": "prior", **stats, "time_s": round(time.perf_counter() - start, 3)})
        torch.save({"union_labels": union, "state_dict": to_cpu(autoencoder.state_dict())},
                   self.run.checkpoints / "shape_prior.pt")
        return self.multi_domain(ShapePriorLoss(autoencoder, offsets, self.cfg.prior.weight))


def train_centralized(data: dict[str, Path], cfg: PedsegConfig, out: Path, progress: bool = True) -> dict:
    """Train with `cfg.scheme` over all `data` joints; write the run directory; return results.json."""
    joints = load_joints(data, cfg)
    run = RunDir(out).create(cfg)
    seed_everything(cfg.train.seed, cfg.train.num_threads)
    runner = CentralizedRun(joints, cfg, run, progress)
    scheme = {"individual": runner.individual, "transfer": runner.transfer, "shared": runner.shared,
              "multi-domain": runner.multi_domain, "contrastive": runner.multi_domain, "full": runner.full}[cfg.scheme]
    sites = scheme()
    results = {"mode": "centralized", "scheme": cfg.scheme, "strategy": None, "rounds": cfg.train.epochs,
               "sites": sites, "mean_dice": mean_or_none(s["mean_dice"] for s in sites.values())}
    run.write_results(results)
    return results
