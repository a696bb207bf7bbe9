"""One hospital's model and data in a federation: the trainer of the site algorithm
(`pedseg_core.train.site_algorithm`), which keeps its state between messages and decides what leaves.

Takes the global shared weights and a round number, trains locally with THE training loop, returns the new
shared weights, the number of training slices and metrics. Its private layers (domain norms with running
statistics, the head) never leave it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from monai.data import partition_dataset
from torch import Tensor

from pedseg_core.config import CONTRASTIVE_SCHEMES, PedsegConfig
from pedseg_core.data.augment import SliceAugmentation
from pedseg_core.data.loading import load_slice_set, split_cases
from pedseg_core.data.sampling import SliceSet, domain_balanced_batches
from pedseg_core.data.union_labels import to_union_labels, union_to_joint_lut
from pedseg_core.data.validate import require_valid_dataset
from pedseg_core.device import resolve_device, to_cpu
from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.site import evaluate_site
from pedseg_core.losses.multiscale import MultiScaleContrastive
from pedseg_core.losses.proximal import ProximalTerm
from pedseg_core.model.checkpoint import DomainSpec, save_checkpoint
from pedseg_core.model.partition import head_state_dict, load_partial_state, split_for_scheme
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss
from pedseg_core.model.unet import build_model
from pedseg_core.policy import DPBudget
from pedseg_core.train.centralized import seed_everything
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.norm_stats import recalibrate_batch_norm
from pedseg_core.train.private_training import PrivateTraining
from pedseg_core.train.schedule import make_optimizer
from pedseg_core.train.shape_prior import train_shape_autoencoder, train_shape_autoencoder_privately


class SiteTrainer:
    """A site's model (one domain: its norms and head) over its validated nnU-Net dataset."""

    def __init__(self, site: str, joint: str, data_dir: Path, cfg: PedsegConfig, part: tuple[int, int] = (0, 1),
                 union: tuple[int, int] | None = None, secret: int | None = None) -> None:
        """`part` = (i, k): this site holds every k-th training case starting at i (a dataset split into k
        simulated sites of one joint); all of them evaluate on the joint's evaluation cases. `union` = (number
        of union classes, this joint's offset): the `shared` scheme's one head over the bones of all joints.
        `secret`: the site's own entropy, from which a federated site draws its training batches, augmentation
        and prototype subsets (a server knows the round and `train.seed`); None: drawn from `train.seed` and
        the round, reproducibly (`pedseg adapt`, tests)."""
        if cfg.scheme == "shared" and union is None:
            raise PedsegError("the shared scheme needs the union label space (sent by the server)")
        self.cfg = cfg
        self.dataset = require_valid_dataset(Path(data_dir))  # DatasetError names every bad file
        self.domain = DomainSpec(name=site, joint=joint, labels=dict(self.dataset.labels))
        train, self.eval_cases = split_cases(self.dataset, cfg.data, cfg.train.seed)
        self.train_cases = partition_dataset(train, num_partitions=part[1])[part[0]]  # interleaved, in order
        self._slices: SliceSet | None = None
        self.union = union if cfg.scheme == "shared" else None
        seed_everything(cfg.train.seed, cfg.train.num_threads)
        projection = cfg.contrastive if cfg.scheme in CONTRASTIVE_SCHEMES else None
        # ImageNet initialization (when configured) gives the site's norms their ImageNet statistics too; the
        # filters are replaced by the server's global weights in every round.
        classes = self.union[0] if self.union else self.dataset.num_classes
        self.device = resolve_device(cfg.train.device)
        self.model = build_model([classes], cfg.model, projection=projection).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg.train.learning_rate, cfg.train.weight_decay)
        self.private: PrivateTraining | None = None  # DP-SGD, when the site's policy asks for it
        self.secret = secret

    def round_seed(self, purpose: str, server_round: int, seed: int) -> int:
        """The seed of one random draw (`purpose`) in `server_round`: `seed` (from `train.seed` and the round)
        without a secret, else one that only the site's secret determines."""
        if self.secret is None:
            return seed
        digest = hashlib.sha256(f"{self.secret}:{purpose}:{server_round}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1  # a non-negative int64

    def use_privacy(self, budget: DPBudget, state: dict | None = None) -> None:
        """Train with DP-SGD (see `pedseg_core.train.private_training`): the site's lifetime `budget`, its noise
        calibrated from the policy's own plan; `state`: the accountant of every earlier DP step of this site on
        this dataset. Its Adam state must be loaded before. DP needs group norms, per-sample losses and no
        coupling between a batch's slices, so the contrastive term (in-batch positives) and FedProx are off
        under DP."""
        if self.private is not None:
            self.private.resume(state)
            return
        if self.cfg.model.norm != "group":
            raise PedsegError(f"site {self.domain.name}: its policy asks for DP-SGD, which needs group norms (Opacus "
                              f"cannot bound a slice's gradient through BatchNorm): run with --set model.norm=group")
        if self.model.scales:  # no contrastive term under DP: the projection heads get no gradient
            self.model.projections.requires_grad_(False)
        self.private = PrivateTraining(self.model, self.optimizer, budget, len(self.train_cases),
                                       self.cfg.train.batch_size, state)

    def training_slices(self) -> SliceSet:
        """This site's training slices, read and preprocessed once per process (a message's handler may
        evaluate, train and compute prototypes on them)."""
        if self._slices is None:
            slices = load_slice_set(self.train_cases, self.cfg.data)
            if self.union:  # the shared scheme's head predicts the union of all joints' bones
                slices = SliceSet(slices.images, to_union_labels(slices.labels, self.union[1]).to(torch.uint8),
                                  slices.cases)
            self._slices = slices
        return self._slices

    def shared_state(self) -> dict[str, Tensor]:
        return to_cpu(split_for_scheme(self.model, self.cfg.scheme)[0])

    def private_state(self) -> dict[str, Tensor]:
        return to_cpu(split_for_scheme(self.model, self.cfg.scheme)[1])

    def head_state(self) -> dict[str, Tensor]:
        return to_cpu(head_state_dict(self.model))

    def load_private(self, private: dict[str, Tensor]) -> None:
        """The site's own private layers (its memory or disk): trusted."""
        load_partial_state(self.model, private)

    def own_keys(self, head: bool = False) -> set[str]:
        """The keys of this model's shared weights (or of its head), without copying a tensor."""
        return set(head_state_dict(self.model) if head else split_for_scheme(self.model, self.cfg.scheme)[0])

    def load_received(self, arrays: dict[str, Tensor], part: set[str], what: str) -> None:
        """Arrays a server sent, loaded only where they are among `part` (`own_keys`: its shared weights, or its
        head when pooled): a server cannot overwrite the site's private norms or a head it keeps."""
        if foreign := sorted(set(arrays) - part):
            raise PedsegError(f"site {self.domain.name}: the server sent {len(foreign)} array(s) that are not "
                              f"{what} of this model, e.g. {foreign[0]}; refused")
        load_partial_state(self.model, arrays)

    def optimizer_state(self) -> dict:
        """Adam's moments, kept at the site between rounds (a fresh Adam each round takes full-size first
        steps and makes the sites drift apart)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def train_round(self, shared: dict[str, Tensor], server_round: int, num_rounds: int,
                    proximal_mu: float = 0.0, other_prototypes: list[Tensor] | None = None,
                    prior: ShapePriorLoss | None = None) -> tuple[dict[str, Tensor], int, dict[str, float]]:
        """Global shared weights in -> (new shared weights, training slices seen, metrics).

        With projection heads, the contrastive term uses in-batch positives and, when given, the other
        domains' prototypes (per scale [M, D]) as negatives."""
        self.load_received(shared, self.own_keys(), "shared weights")
        tc = self.cfg.train
        if self.private is not None:
            if proximal_mu > 0:
                raise PedsegError(f"site {self.domain.name}: DP-SGD with FedProx is not supported (the proximal "
                                  f"term's gradient would bypass the clipping); use --strategy fedavg")
            self.private.require_budget(tc.steps_per_epoch, self.domain.name)
        start = time.perf_counter()
        slices = self.training_slices()
        loaded = time.perf_counter()
        generator = torch.Generator().manual_seed(self.round_seed("batches", server_round,
                                                                  tc.seed * 100_003 + server_round))
        augment = (SliceAugmentation(self.cfg.data, self.round_seed("augment", server_round, tc.seed + server_round)
                                     % 2**32) if self.cfg.data.augment else None)
        if self.private is not None:  # Poisson batches of cases, from the OS's entropy
            batches = self.private.batches(slices, augment)
        else:
            batches = domain_balanced_batches([slices], tc.batch_size, generator, augment,
                                              self.cfg.data.foreground_fraction)
        regularizers = [ProximalTerm(self.model, shared, proximal_mu)] if proximal_mu > 0 else []
        if prior is not None:
            prior.autoencoder.to(self.device)
        plan = StepPlan(tc.steps_per_epoch, (server_round - 1) * tc.steps_per_epoch, num_rounds * tc.steps_per_epoch)
        contrastive = None
        if self.model.scales and self.private is None:
            labels = None if other_prototypes is None else torch.arange(1, len(other_prototypes[0]) + 1)
            contrastive = MultiScaleContrastive(self.cfg.contrastive, None, other_prototypes, labels)
        optimizer = self.optimizer if self.private is None else self.private.optimizer
        stats = train_steps(self.model, batches, optimizer, tc, plan, regularizers, contrastive=contrastive,
                            prior=prior, private=self.private)
        if self.private is not None:  # the planned count: the sampled one depends on the data
            stats["slices"] = tc.steps_per_epoch * tc.batch_size
            stats["epsilon"] = self.private.spent()
        stats["load_time_s"] = loaded - start
        stats["train_time_s"] = time.perf_counter() - loaded
        return self.shared_state(), stats["slices"], stats

    def train_prior_round(self, autoencoder: ShapeAutoEncoder, offset: int, server_round: int,
                          budget: DPBudget | None = None, privacy_state: dict | None = None
                          ) -> tuple[int, dict, dict | None]:
        """Stage 1 of the federated prior: the shape auto-encoder learns this site's masks (moved to the union
        label space at `offset`) for prior.steps_per_epoch steps. With a DP `budget` (and the accountant's
        `privacy_state` from earlier rounds), by DP-SGD over Poisson batches of cases, sampled like the
        segmentation rounds. Returns (training slices, metrics, the accountant's new state or None)."""
        steps = self.cfg.prior.steps_per_epoch
        autoencoder.to(self.device)
        if budget is None:
            labels = self.training_slices().labels
            stats = train_shape_autoencoder(autoencoder, [labels], [offset], self.cfg.prior,
                                            self.round_seed("prior", server_round, self.cfg.train.seed + server_round)
                                            % 2**32, steps=steps)
            autoencoder.cpu()
            return len(labels), stats, None
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=self.cfg.prior.learning_rate)
        private = PrivateTraining(autoencoder, optimizer, budget, len(self.train_cases), self.cfg.train.batch_size,
                                  privacy_state)
        private.require_budget(steps, self.domain.name)
        train_shape_autoencoder_privately(private, self.training_slices(), offset, steps)
        private.hooks.remove_hooks()  # the auto-encoder goes on as a plain module (the weights it sends)
        autoencoder.cpu()
        return steps * self.cfg.train.batch_size, {"epsilon": private.spent()}, private.state_dict()

    @torch.no_grad()
    def prototypes(self, server_round: int = 0) -> tuple[list[Tensor], int] | None:
        """Per contrastive scale, the mean projected embedding [D] over this site's training slices (all of
        them, or a random `contrastive.max_prototype_slices` of them drawn anew each round, from the site's secret
        when it has one; no augmentation), and the slice count; None without projection heads or with fewer
        slices than `contrastive.min_prototype_slices` (a mean over few slices could describe single images)."""
        slices = self.training_slices().images
        if not self.model.scales or len(slices) < self.cfg.contrastive.min_prototype_slices:
            return None
        slices = seeded_subset(slices, self.cfg.contrastive.max_prototype_slices,
                               self.round_seed("prototypes", server_round, self.cfg.train.seed + server_round))
        self.model.eval()
        batch = self.cfg.eval.batch_size
        parts = [self.model.forward_with_embeddings(slices[i:i + batch].to(self.device), 0)[1]
                 for i in range(0, len(slices), batch)]
        return [torch.cat([p[s] for p in parts]).mean(0).cpu() for s in range(len(self.model.scales))], len(slices)

    def evaluate(self, shared: dict[str, Tensor], pred_dir: Path | None = None) -> dict:
        """The personalized model (global shared weights + this site's private layers, BatchNorm statistics
        re-estimated on its training slices for the global weights) on its evaluation cases: a `results.json`
        site entry. The `shared` scheme has no private layers: the global model as it is, union labels mapped
        back to the joint's."""
        self.load_received(shared, self.own_keys(), "shared weights")
        if self.union:
            lut = union_to_joint_lut(self.union[0], self.union[1], self.dataset.num_classes)
            return evaluate_site(self.model, 0, self.domain.joint, self.eval_cases, self.domain.bones, self.cfg,
                                 pred_dir, lut)
        images = seeded_subset(self.training_slices().images, self.cfg.eval.recalibration_slices, self.cfg.train.seed)
        recalibrate_batch_norm(self.model, 0, images, self.cfg.eval.batch_size)
        return evaluate_site(self.model, 0, self.domain.joint, self.eval_cases, self.domain.bones, self.cfg,
                             pred_dir)

    def save_model(self, path: Path, server_round: int) -> None:
        """The personalized model as `evaluate` left it (global shared weights of `server_round`, this site's
        norms, recalibrated statistics and head) as a complete checkpoint for `pedseg predict`. The `shared`
        scheme has no personalized model (its one head predicts the union of all joints' bones)."""
        if self.union:
            raise PedsegError("the shared scheme has no personalized model to save")
        save_checkpoint(path, self.model, self.cfg, [self.domain], round=server_round)


def seeded_subset(images: Tensor, limit: int, seed: int) -> Tensor:
    """images [N, ...] -> at most `limit` of them, a random subset fixed by `seed` (all N when N <= limit)."""
    if len(images) <= limit:
        return images
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]]
