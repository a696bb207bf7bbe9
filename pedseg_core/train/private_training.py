"""Differential privacy at a site: DP-SGD with Opacus, at the level of a patient.

Each step samples every training case independently with probability q = batch_size / cases (Poisson sampling,
what the accountant assumes) and takes one random slice of each sampled case, so a per-sample gradient is one
patient's whole contribution to the step; Opacus clips it to `max_grad_norm` and adds Gaussian noise. The noise
multiplier is calibrated from the site's own plan alone: its lifetime (epsilon, delta) over the policy's
`planned_steps` at the step's sampling rate (never from the run's number of rounds, which the server sets). An
RDP accountant counts what each step spends; the site keeps one per dataset across every run and round
(`pedseg_core.train.privacy_ledger`) and refuses DP training once it has spent its epsilon or its planned steps.
Both the sampling and the noise draw from the operating system's entropy (never from the run's seeds, which the
server knows), with Opacus' secure noise.

What DP-SGD covers: every parameter the site trains (shared filters, its norms, its head) and, in the `full`
scheme, the shape auto-encoder it trains on its masks in the prior's stage 1; one noise multiplier serves both and
one accountant counts them. What it does not cover: prototypes (a DP site
sends none) and its test-set metrics.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer

from pedseg_core.data.sampling import Batch, SliceSet
from pedseg_core.errors import PedsegError
from pedseg_core.policy import DPBudget


class PrivacyBudgetSpent(PedsegError):
    """The site has spent its lifetime epsilon (or its planned steps) on this dataset."""


def entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded from the operating system's entropy."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def planned_noise_multiplier(budget: DPBudget, sample_rate: float) -> float:
    """The noise that spends the lifetime (epsilon, delta) over the policy's `planned_steps` at `sample_rate`."""
    return float(get_noise_multiplier(target_epsilon=budget.epsilon, target_delta=budget.delta,
                                      sample_rate=sample_rate, steps=budget.planned_steps, accountant="rdp"))


class PrivateTraining:
    """DP-SGD on `model` (per-sample gradient hooks) with `optimizer` wrapped by Opacus' DPOptimizer.

    `cases`: training cases at this site; `state`: what `state_dict` returned before, in any run or round on this
    dataset (the accountant's history)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, budget: DPBudget, cases: int,
                 batch_size: int, state: dict | None = None) -> None:
        self.model = model
        self.budget = budget
        self.batch_size = batch_size
        self.sample_rate = min(1.0, batch_size / cases)
        self.accountant = RDPAccountant()
        self.resume(state)
        self.noise_multiplier = planned_noise_multiplier(budget, self.sample_rate)
        self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean")
        self.generator = entropy_generator()  # sampling (CPU); the noise is drawn on the parameters' device
        noise = entropy_generator(next(model.parameters()).device)
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=budget.max_grad_norm, expected_batch_size=batch_size,
                                     loss_reduction="mean", generator=noise, secure_mode=True)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))

    def resume(self, state: dict | None) -> None:
        """The accountant as `state` has it now (None: nothing spent): other runs of the site may have spent
        since this one last trained."""
        if state is None:
            self.accountant.history = []
        else:  # a copy: the accountant appends to its history in place
            self.accountant.load_state_dict({**state["accountant"], "history": list(state["accountant"]["history"])})

    def spent(self) -> float:
        """The epsilon spent so far (0 before the first step)."""
        return spent_epsilon(self.state_dict())

    def steps_taken(self) -> int:
        """Every DP step this accountant has counted."""
        return sum(steps for _, _, steps in self.accountant.history)

    def require_budget(self, steps: int, site: str) -> None:
        """PrivacyBudgetSpent unless `steps` more steps keep the site within its lifetime epsilon and planned
        steps: the error names the policy item only; the site's log line has the numbers."""
        probe = RDPAccountant()
        probe.load_state_dict(self.accountant.state_dict())
        probe.history.append((self.noise_multiplier, self.sample_rate, steps))
        if self.steps_taken() + steps > self.budget.planned_steps:
            item = "dp.planned_steps"
        elif probe.get_epsilon(self.budget.delta) > self.budget.epsilon * (1 + 1e-6):
            item = "dp.epsilon"
        else:
            return
        print(f"pedseg site {site}: DP training refused: epsilon {self.spent():.3g} of {self.budget.epsilon:g} "
              f"spent over {self.steps_taken()} of {self.budget.planned_steps} planned steps; {steps} more "
              f"would exceed {item}", file=sys.stderr, flush=True)
        raise PrivacyBudgetSpent(f"site {site}: its privacy budget is spent (the site's policy item {item}): it "
                                 f"trains no more under DP")

    def batches(self, slices: SliceSet, transform=None) -> Iterator[Batch]:
        """Endless Poisson batches of cases, one random slice of each (a batch may be empty)."""
        members = [(slices.cases == c).nonzero().flatten() for c in slices.cases.unique()]  # each case's slices
        while True:
            chosen = torch.nonzero(torch.rand(len(members), generator=self.generator) < self.sample_rate).flatten()
            picks = [members[int(c)] for c in chosen]
            idx = torch.stack([p[torch.randint(len(p), (), generator=self.generator)] for p in picks]) \
                if picks else torch.zeros(0, dtype=torch.long)
            images, labels = slices.images[idx], slices.labels[idx].long()
            if transform is not None and len(idx):
                images, labels = transform(images, labels)
            yield Batch(images, labels, torch.zeros(len(idx), dtype=torch.long))

    def empty_step(self) -> None:
        """An empty Poisson batch still takes a step: noise only (and the accountant counts it)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.step()

    def state_dict(self) -> dict:
        """Plain values (torch.load with weights_only reads them back)."""
        return {"accountant": dict(self.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "delta": self.budget.delta}


def spent_epsilon(state: dict) -> float:
    """The epsilon a site has spent, from its saved `PrivateTraining.state_dict()`."""
    accountant = RDPAccountant()
    accountant.load_state_dict(state["accountant"])
    return float(accountant.get_epsilon(state["delta"])) if accountant.history else 0.0
