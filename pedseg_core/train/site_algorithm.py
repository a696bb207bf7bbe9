"""One hospital's side of a federation, without any federated-learning framework (as MONAI's
`monai.fl.client.ClientAlgo`): typed requests in, typed results out (`pedseg_core.train.site_requests`).

The algorithm owns the site's trainer (`SiteTrainer`), its private layers in memory and on its disk
(`PrivateStore`: `<state_dir>/run-<run>/`), its Adam state and the copies of what it sent, and spends from the
DP-SGD accountant of the site's dataset (`PrivacyLedger`: `<state_dir>/privacy/<dataset hash>.pt`, one for
every run and round); and it decides, in `_released`, what of a round may leave it, by the site's policy. A Flower
ClientApp (client/app.py) only translates messages to these calls; a hospital can drive them by hand.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor

from pedseg_core.config import PedsegConfig
from pedseg_core.errors import PedsegError
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss
from pedseg_core.policy import Requests
from pedseg_core.protocol import ARRAYS, EPSILON, HEAD, PROTOTYPE_SEP, PROTOTYPE_SLICES, PROTOTYPES, TRAIN_LOSS
from pedseg_core.train.privacy_ledger import PrivacyLedger, dataset_hash
from pedseg_core.train.private_store import PrivateStore
from pedseg_core.train.private_training import spent_epsilon
from pedseg_core.train.request_bounds import bounded_config
from pedseg_core.train.site import SiteTrainer
from pedseg_core.train.site_requests import (
    EvaluateRequest,
    EvaluateResult,
    PriorRequest,
    PriorResult,
    SiteSettings,
    StateDict,
    TrainRequest,
    TrainResult,
    UnionLabels,
)


class SiteAlgorithm:
    """A site's training, prior rounds and evaluation in one federated run."""

    def __init__(self, settings: SiteSettings, cfg: PedsegConfig, run: str, union: UnionLabels | None = None,
                 private: StateDict | None = None) -> None:
        """Validates the site's data. `run`: the federation run it takes part in (a folder name: digits; a
        resumed run's is that of the run it continues); `union`: the `shared` scheme's label space; `private`:
        the private layers the node holds in memory, preferred over those on its disk. A run whose
        configuration breaks the site's policy is refused (`pedseg_core.train.request_bounds`); training
        batches, augmentation and prototype subsets are drawn from a secret of this algorithm's own."""
        self.settings = settings
        cfg = bounded_config(cfg, settings.policy, settings.own, settings.site)
        self.trainer = SiteTrainer(settings.site, settings.joint, settings.data_dir, cfg, settings.part, union,
                                   secret=int.from_bytes(os.urandom(8), "big"))
        self.store = PrivateStore(settings.state_dir, run)
        self.store.require_open()  # a finished run's private layers never go into another run
        if private is None:
            private = self.store.load()
        if private is not None:
            self.trainer.load_private(private)
        if (optimizer := self.store.load_optimizer()) is not None:
            self.trainer.load_optimizer_state(optimizer)
        self._ledger: PrivacyLedger | None = None

    @property
    def ledger(self) -> PrivacyLedger:
        """The site's DP accountant for its training cases (hashed on first use)."""
        if self._ledger is None:
            self._ledger = PrivacyLedger(self.settings.state_dir, dataset_hash(self.trainer.train_cases))
        return self._ledger

    def use_settings(self, settings: SiteSettings) -> None:
        """The site's settings as its files say now (its policy read anew): the run is checked against them
        again, and refused if it now breaks them."""
        bounded_config(self.trainer.cfg, settings.policy, settings.own, settings.site)
        self.settings = settings

    def private_state(self) -> StateDict:
        """The private layers (domain norms, head) as they are now: for the node's own memory, never sent."""
        return self.trainer.private_state()

    def train(self, request: TrainRequest) -> TrainResult:
        """One round: (evaluate the previous global weights first, when asked,) train locally from the round's
        global weights, keep the private layers, Adam state and accountant, and return what may leave."""
        trainer = self.trainer
        spent = None
        if (dp := self.settings.policy.dp) is not None:  # DP-SGD on the accountant of the site's dataset
            spent = self.ledger.load()
            trainer.use_privacy(dp, spent)
        if request.head is not None and self._granted(request.share_head).share_head:  # the joint's pooled head
            trainer.load_received(request.head, trainer.own_keys(head=True), "its head")
        evaluation = None
        if request.evaluate_first:  # the personalized model on the global weights of the previous round
            evaluation = self.evaluate(EvaluateRequest(request.shared, request.server_round - 1))
        shared, slices, stats = trainer.train_round(request.shared, request.server_round, request.num_rounds,
                                                    request.proximal_mu, self._other_prototypes(request.prototypes),
                                                    self._prior_loss(request))
        self.store.save(trainer.private_state())
        self.store.save_optimizer(trainer.optimizer_state())
        if trainer.private is not None:
            self.ledger.save(trainer.private.state_dict(), spent)
        result = self._released(request, shared, slices, stats)
        result.evaluation = evaluation
        if self.settings.keep_sent:
            sent = {ARRAYS: result.shared, PROTOTYPES: result.prototypes, HEAD: result.head}
            self.store.save_sent(request.server_round, {k: v for k, v in sent.items() if v is not None}, slices)
        return result

    def _released(self, request: TrainRequest, shared: StateDict, slices: int, stats: dict) -> TrainResult:
        """What of a round leaves the site, every rule in this one place: the shared weights, the example count
        and timings; the training losses only without DP (DP does not cover them), with DP the epsilon spent;
        its joint's prototypes and its head only as far as the run asks and the site's policy grants
        (`SitePolicy.grant`: no prototypes under DP, each a mean over enough slices). The policy mod of a Flower
        site checks the reply again and records the refusals."""
        trainer = self.trainer
        metrics = {"lr": stats["lr"], "train-time-s": stats["train_time_s"], "load-time-s": stats["load_time_s"]}
        if trainer.private is not None:
            metrics[EPSILON] = stats["epsilon"]
        else:
            metrics[TRAIN_LOSS] = stats["loss"]
            metrics.update({k.replace("_", "-"): v for k, v in stats.items() if k.endswith("_loss")})
        result = TrainResult(shared, slices, metrics)
        granted = self._granted(request.share_head)
        if granted.share_prototypes and trainer.private is None and \
                (prototypes := trainer.prototypes(request.server_round)) is not None and \
                prototypes[1] >= granted.min_prototype_slices:
            means, count = prototypes
            result.prototypes = {f"{trainer.domain.joint}{PROTOTYPE_SEP}{s}": m for s, m in enumerate(means)}
            metrics[PROTOTYPE_SLICES] = count
        if granted.share_head:
            result.head = trainer.head_state()
        return result

    def _granted(self, share_head: bool = False) -> Requests:
        """What the run asks of this site (its configuration; the head when the server pools it), cut down to
        what the site's policy allows."""
        cfg = self.trainer.cfg
        asked = Requests(per_case_metrics=cfg.federation.per_case_metrics,
                         share_prototypes=cfg.contrastive.share_prototypes,
                         min_prototype_slices=cfg.contrastive.min_prototype_slices, share_head=share_head)
        return self.settings.policy.grant(asked)[0]

    def _other_prototypes(self, prototypes: StateDict) -> list[Tensor] | None:
        """The other joints' prototypes ("<joint>|<scale>" -> [D]) as one [M, D] per scale (M joints)."""
        joints = sorted({k.split(PROTOTYPE_SEP)[0] for k in prototypes} - {self.trainer.domain.joint})
        if not joints:
            return None
        return [torch.stack([prototypes[f"{j}{PROTOTYPE_SEP}{s}"] for j in joints])
                for s in range(len(self.trainer.model.scales))]

    def _prior_loss(self, request: TrainRequest) -> ShapePriorLoss | None:
        if request.prior is None:
            return None
        if request.union is None:
            raise PedsegError("the shape prior came without the union label space it is learned in")
        autoencoder = self._autoencoder(request.prior, request.union)
        return ShapePriorLoss(autoencoder, [request.union.offset], self.trainer.cfg.prior.weight)

    def _autoencoder(self, state: StateDict, union: UnionLabels) -> ShapeAutoEncoder:
        autoencoder = ShapeAutoEncoder(union.classes, self.trainer.cfg.prior.channels)
        autoencoder.load_state_dict(state)
        return autoencoder

    def train_prior(self, request: PriorRequest) -> PriorResult:
        """Stage 1 of `full`: one round of the shape auto-encoder on this site's masks (weights out, no data);
        under DP by DP-SGD on the site's accountant, and then without losses (DP does not cover them)."""
        autoencoder = self._autoencoder(request.autoencoder, request.union)
        dp = self.settings.policy.dp
        spent = self.ledger.load() if dp else None
        slices, stats, privacy = self.trainer.train_prior_round(autoencoder, request.union.offset, request.server_round,
                                                                dp, spent)
        if privacy is not None:
            self.ledger.save(privacy, spent)
            stats = {}
        return PriorResult(autoencoder.state_dict(), slices, {k.replace("_", "-"): v for k, v in stats.items()})

    def evaluate(self, request: EvaluateRequest) -> EvaluateResult:
        """The personalized model on `request.shared` (the global weights of `request.server_round`) over the
        site's evaluation cases; the model it scored stays at the site as `model.pt`, for `pedseg predict` (the
        `shared` scheme has none: its head is the union of all bones). Per-case metrics only where the run asks and
        the policy allows; a DP site adds the epsilon it has spent. Over fewer evaluation cases than the policy's
        `min_eval_cases`, no metric leaves (the result says why; the site's log has the count). The run's last
        evaluation closes its run folder (`PrivateStore.finish`)."""
        entry = self.trainer.evaluate(request.shared)
        if not self.trainer.union:
            self.trainer.save_model(self.store.model_path, request.server_round)
        if request.server_round >= self.trainer.cfg.federation.num_rounds(self.trainer.cfg.train):
            self.store.finish()  # the run's last evaluation: its folder closes
        least = self.settings.policy.min_eval_cases
        if entry["cases"] < least:
            print(f"pedseg site {self.settings.site}: no metric of round {request.server_round} leaves: "
                  f"{entry['cases']} evaluation case(s), the policy's min_eval_cases is {least}",
                  file=sys.stderr, flush=True)
            return EvaluateResult(None, f"evaluation: no metric sent: the site's policy item min_eval_cases "
                                        f"({least}) admits no metric over fewer cases")
        if not self._granted().per_case_metrics:
            entry.pop("per_case", None)
        if self.settings.policy.dp is not None and (privacy := self.ledger.load()) is not None:
            entry["epsilon"] = spent_epsilon(privacy)
        return EvaluateResult(entry)
