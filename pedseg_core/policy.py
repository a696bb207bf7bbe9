"""A site's privacy policy: what this site allows to leave it, owned by the site (`pedseg-client --policy
POLICY.yaml`), never raised by the operator's run config.

```yaml
dp:                      # differential privacy (Opacus DP-SGD); absent = no DP
  epsilon: 8.0
  delta: 1.0e-5
  max_grad_norm: 1.0
share_prototypes: true   # contrastive/full: may per-joint mean embeddings leave?
min_prototype_slices: 32 # ... each a mean over at least this many slices
share_head: true         # may the head be pooled with other sites of the same joint?
per_case_metrics: false  # default: only per-bone means and the case count leave
require_secure_aggregation: false  # true: shared weights leave only masked by SecAgg+
approved_apps:           # the apps (sha256 of the FAB, `pedseg-client app-hash APP_DIR`) this site runs;
  - 3f2a...              # absent = any app its federation sends (pedseg-client warns)
```

A run asks (`Requests`); the site grants what its policy allows and refuses the rest, in words the run's
metrics.jsonl records: a run may ask for less than a policy allows, never for more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pedseg_core.config import load_yaml
from pedseg_core.errors import PedsegError
from pedseg_core.validation_errors import one_line


class DPBudget(BaseModel):
    """The (epsilon, delta) this site spends over a whole run, and the per-sample gradient clipping norm."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)


AppHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # sha256 of a FAB, lowercase hex


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dp: DPBudget | None = None
    share_prototypes: bool = True
    min_prototype_slices: int = Field(32, ge=1)
    share_head: bool = True
    per_case_metrics: bool = False
    approved_apps: tuple[AppHash, ...] | None = None  # None: any app; checked outside the app (client/approved_app.py)
    require_secure_aggregation: bool = False  # send shared weights only masked by SecAgg+

    def approves(self, fab_hash: str) -> bool:
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
    dp = (f"DP-SGD with epsilon {policy.dp.epsilon:g}, delta {policy.dp.delta:g}, clipping {policy.dp.max_grad_norm:g}"
          if policy.dp else "no DP")
    prototypes = (f"prototypes over >= {policy.min_prototype_slices} slices" if policy.share_prototypes
                  else "no prototypes")
    apps = ("any app (no approved_apps)" if policy.approved_apps is None
            else f"{len(policy.approved_apps)} approved app(s) only")
    secagg = "; shared weights only under SecAgg+" if policy.require_secure_aggregation else ""
    return (f"{dp}; {prototypes}; head {'may be' if policy.share_head else 'never'} pooled; "
            f"{'per-case metrics allowed' if policy.per_case_metrics else 'no per-case metrics'}{secagg}; "
            f"runs {apps}")


def load_policy(path: Path | None) -> SitePolicy:
    """The policy in `path` (None: the default, safe one); PedsegError naming the file and the problem."""
    if path is None:
        return SitePolicy()
    values = load_yaml(Path(path))
    try:
        return SitePolicy.model_validate(values)
    except ValidationError as err:
        raise PedsegError(f"{path}: {one_line(err, SitePolicy)}") from None
