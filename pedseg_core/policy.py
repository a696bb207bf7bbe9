"""A site's privacy policy: what this site allows to leave it, owned by the site (`pedseg-client --policy
POLICY.yaml`), never raised by the operator's run config.

```yaml
dp:                      # differential privacy (Opacus DP-SGD); absent = no DP
  epsilon: 8.0           # lifetime: all this site's DP training on its dataset, every run and round together
  delta: 1.0e-5          # lifetime
  max_grad_norm: 1.0
  planned_steps: 1000    # the private steps the site spends them over (its noise is calibrated from these)
share_prototypes: true   # contrastive/full: may per-joint mean embeddings leave?
min_prototype_slices: 32 # ... each a mean over at least this many slices
share_head: true         # may the head be pooled with other sites of the same joint?
per_case_metrics: false  # default: only per-bone means and the case count leave
require_secure_aggregation: false  # true: shared weights leave only masked by SecAgg+ (honest-but-curious server only)
approved_apps:           # the apps (sha256 of the FAB, `pedseg-client app-hash APP_DIR`) this site runs;
  - 3f2a...              # absent = only its own installed pedseg's app (pedseg-client --allow-any-app: any)
# bounds on every request that shapes what leaves (a run outside them is refused, naming the item):
allowed_schemes: [multi-domain, contrastive, full]  # `shared` sends the site's norms and head: only when listed
min_batch_size: 4        # slices per step (train.batch_size; prior.batch_size in `full`)
min_local_steps: 2       # steps per round (train.steps_per_epoch; prior.steps_per_epoch in `full`)
max_learning_rate: 0.01  # train.learning_rate (and prior.learning_rate in `full`)
max_image_size: 512      # data.image_size
max_width: 512           # every width of model.decoder_channels and prior.channels
max_embedding_dim: 512   # contrastive.hidden and contrastive.dim
require_augmentation: true  # refuse data.augment false or probability 0; augment at the site's own strength
min_eval_cases: 1        # no metric leaves that is a mean over fewer evaluation cases (the issue's aim: 2)
```

Never taken from the run config, whatever it says: the evaluation split (`data.folds`, `data.fold`,
`data.validation_fraction`: the site's own, `pedseg-client` node config `folds`/`fold`), `model.encoder_weights`
(none), `tracking.*` (none at a site) and `train.device` (the node config's `device`, default auto); see
`pedseg_core.train.request_bounds`.

A run asks (`Requests`); the site grants what its policy allows and refuses the rest, in words the run's
metrics.jsonl records: a run may ask for less than a policy allows, never for more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pedseg_core.config import Scheme, load_yaml
from pedseg_core.errors import PedsegError
from pedseg_core.validation_errors import one_line


class DPBudget(BaseModel):
    """The lifetime (epsilon, delta) of this site on its dataset: every DP step of every run and round spends
    from one accountant (`pedseg_core.train.privacy_ledger`). The noise is calibrated to spend them over
    `planned_steps` private steps (training rounds and the prior's stage 1 alike), a number the site chooses and
    no server sends; the default, 1000, is a few federations' worth of the presets' rounds. `max_grad_norm`: the
    per-sample gradient clipping norm."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    planned_steps: int = Field(1000, ge=1)


AppHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # sha256 of a FAB, lowercase hex


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dp: DPBudget | None = None
    share_prototypes: bool = True
    min_prototype_slices: int = Field(32, ge=1)
    share_head: bool = True
    per_case_metrics: bool = False
    approved_apps: tuple[AppHash, ...] | None = None  # None: pedseg-client decides (its own app by default);
    # checked outside the app (client/approved_app.py)
    # send shared weights only masked by SecAgg+, which protects against an honest-but-curious server only: the
    # server relays the sites' public keys unauthenticated, so a server that lies in the key exchange can unmask
    require_secure_aggregation: bool = False
    # bounds on the run's configuration (pedseg_core.train.request_bounds); the defaults admit the presets
    allowed_schemes: tuple[Scheme, ...] = ("multi-domain", "contrastive", "full")
    min_batch_size: int = Field(4, ge=1)
    min_local_steps: int = Field(2, ge=1)  # the tests' federations train 2 steps a round (presets: 10 and more)
    max_learning_rate: float = Field(0.01, gt=0)
    max_image_size: int = Field(512, ge=32)
    max_width: int = Field(512, ge=1)
    max_embedding_dim: int = Field(512, ge=1)
    require_augmentation: bool = True
    min_eval_cases: int = Field(1, ge=1)  # 1 while the tests' phantom sites hold one test case each

    def approves(self, fab_hash: str) -> bool:
        """Whether the listed approved_apps hold `fab_hash` (no list: True, the site's own defaults then decide)."""
        return self.approved_apps is None or fab_hash in self.approved_apps

    def grant(self, asked: Requests) -> tuple[Requests, list[str]]:
        """(what the site sends: the requests its policy allows, the rest cut down to it; one line per refusal)."""
        granted, refusals = asked, []
        if asked.per_case_metrics and not self.per_case_metrics:
            granted = replace(granted, per_case_metrics=False)
            refusals.append("per-case metrics: refused by the site's policy (per-bone means and the case count only)")
        if asked.share_prototypes and not self.share_prototypes:
            granted = replace(granted, share_prototypes=False)
            refusals.append("prototypes: refused by the site's policy")
        elif asked.share_prototypes and self.dp is not None:
            granted = replace(granted, share_prototypes=False)
            refusals.append("prototypes: not covered by DP-SGD, so a DP site sends none")
        if asked.share_prototypes and asked.min_prototype_slices < self.min_prototype_slices:
            granted = replace(granted, min_prototype_slices=self.min_prototype_slices)
            refusals.append(f"prototypes over {asked.min_prototype_slices} slices: the site's policy needs at least "
                            f"{self.min_prototype_slices}")
        if asked.share_head and not self.share_head:
            granted = replace(granted, share_head=False)
            refusals.append("pooling the head with the joint's other sites: refused by the site's policy")
        return granted, refusals


@dataclass(frozen=True)
class Requests:
    """What a run asks a site to send."""

    per_case_metrics: bool = False
    share_prototypes: bool = True
    min_prototype_slices: int = 32
    share_head: bool = False


def describe_policy(policy: SitePolicy) -> str:
    """One line: what this site lets leave it."""
    dp = (f"DP-SGD with lifetime epsilon {policy.dp.epsilon:g}, delta {policy.dp.delta:g} over "
          f"{policy.dp.planned_steps} planned steps, clipping {policy.dp.max_grad_norm:g}" if policy.dp else "no DP")
    prototypes = (f"prototypes over >= {policy.min_prototype_slices} slices" if policy.share_prototypes
                  else "no prototypes")
    apps = ("the apps pedseg-client names below (no approved_apps)" if policy.approved_apps is None
            else f"{len(policy.approved_apps)} approved app(s) only")
    secagg = "; shared weights only under SecAgg+" if policy.require_secure_aggregation else ""
    return (f"{dp}; {prototypes}; head {'may be' if policy.share_head else 'never'} pooled; "
            f"{'per-case metrics allowed' if policy.per_case_metrics else 'no per-case metrics'}{secagg}; "
            f"runs {apps}; {describe_bounds(policy)}")


def describe_bounds(policy: SitePolicy) -> str:
    """The policy's bounds on a run's configuration, each by its policy item."""
    return (f"allowed_schemes {', '.join(policy.allowed_schemes) or 'none'}, min_batch_size {policy.min_batch_size}, "
            f"min_local_steps {policy.min_local_steps}, max_learning_rate {policy.max_learning_rate:g}, "
            f"max_image_size {policy.max_image_size}, max_width {policy.max_width}, "
            f"max_embedding_dim {policy.max_embedding_dim}, "
            f"require_augmentation {str(policy.require_augmentation).lower()}, "
            f"min_eval_cases {policy.min_eval_cases}")


def load_policy(path: Path | None) -> SitePolicy:
    """The policy in `path` (None: the default, safe one); PedsegError naming the file and the problem."""
    if path is None:
        return SitePolicy()
    values = load_yaml(Path(path))
    try:
        return SitePolicy.model_validate(values)
    except ValidationError as err:
        raise PedsegError(f"{path}: {one_line(err, SitePolicy)}") from None
