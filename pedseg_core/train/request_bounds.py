"""The site's policy applied to a run's configuration, before the site builds anything from it.

A federation's configuration comes from its operator: every knob that shapes what leaves the site is checked
against the site's policy (`SitePolicy`: the allowed schemes, the minimum batch size and local steps, the
maximum learning rate, the ceilings on image size, widths and embedding sizes, augmentation), and a run outside
them is refused with a PedsegError naming the policy item and the run's value, nothing of the site's files (it
goes back to the server). What a federation never sets is replaced by the site's own values (`SiteOwnValues`):
the evaluation split, the encoder's initial weights, tracking and the device; and, where the policy requires
augmentation, its strength (the site's defaults: a run cannot weaken it to nothing).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pedseg_core.config import DataConfig, PedsegConfig, TrackingConfig
from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy

AUGMENTATION = ("augment_probability", "rotate_degrees", "scale_range", "noise_std")  # DataConfig: its strength
REFUSAL = "refused by the site's policy"  # how a refused run's error reply begins (`pedseg audit` flags it)


@dataclass(frozen=True)
class SiteOwnValues:
    """What a site sets for itself, never taken from a run (`pedseg-client`'s node config)."""

    folds: int = DataConfig().folds
    fold: int = DataConfig().fold
    validation_fraction: float = DataConfig().validation_fraction
    device: str = "auto"
    encoder_weights: str = "none"  # the filters come from the server each round


def violations(cfg: PedsegConfig, policy: SitePolicy) -> list[tuple[str, str, Any]]:
    """(policy item, run-config option, the run's value) for every bound the run's configuration breaks."""
    found = []

    def below(item: str, option: str, value: float, least: float) -> None:
        if value < least:
            found.append((item, option, value))

    def above(item: str, option: str, value: float, most: float) -> None:
        if value > most:
            found.append((item, option, value))

    if cfg.scheme not in policy.allowed_schemes:
        found.append(("allowed_schemes", "scheme", cfg.scheme))
    train, prior = cfg.train, cfg.prior
    below("min_batch_size", "train.batch_size", train.batch_size, policy.min_batch_size)
    below("min_local_steps", "train.steps_per_epoch", train.steps_per_epoch, policy.min_local_steps)
    above("max_learning_rate", "train.learning_rate", train.learning_rate, policy.max_learning_rate)
    if cfg.scheme == "full":  # stage 1 trains the shape auto-encoder at the site
        below("min_batch_size", "prior.batch_size", prior.batch_size, policy.min_batch_size)
        below("min_local_steps", "prior.steps_per_epoch", prior.steps_per_epoch, policy.min_local_steps)
        above("max_learning_rate", "prior.learning_rate", prior.learning_rate, policy.max_learning_rate)
    above("max_image_size", "data.image_size", cfg.data.image_size, policy.max_image_size)
    above("max_width", "model.decoder_channels", max(cfg.model.decoder_channels), policy.max_width)
    above("max_width", "prior.channels", max(prior.channels), policy.max_width)
    above("max_embedding_dim", "contrastive.hidden", cfg.contrastive.hidden, policy.max_embedding_dim)
    above("max_embedding_dim", "contrastive.dim", cfg.contrastive.dim, policy.max_embedding_dim)
    if policy.require_augmentation and not cfg.data.augment:
        found.append(("require_augmentation", "data.augment", False))
    if policy.require_augmentation and cfg.data.augment_probability == 0:
        found.append(("require_augmentation", "data.augment_probability", 0.0))
    return found


def bounded_config(cfg: PedsegConfig, policy: SitePolicy, own: SiteOwnValues, site: str) -> PedsegConfig:
    """The run's configuration `cfg` as this site trains by it: refused (PedsegError) where it breaks the site's
    policy, with the site's own values in place of those a federation never sets. The details go to the site's
    log (stderr), the refusal's one line back to the server. `cfg` itself is left as it is."""
    if found := violations(cfg, policy):
        for item, option, value in found:
            print(f"pedseg site {site}: refused a run: its {option} = {value} breaks the site's policy item "
                  f"{item} = {getattr(policy, item)}", file=sys.stderr, flush=True)
        item, option, value = found[0]
        raise PedsegError(f"{REFUSAL}: {item} ({getattr(policy, item)}) does not admit the run "
                          f"config's {option} = {_shown(value)}"
                          + (f" (and {len(found) - 1} more bound(s))" if len(found) > 1 else ""))
    bounded = cfg.model_copy(deep=True)
    data = bounded.data
    augmentation = {k: getattr(DataConfig(), k) for k in AUGMENTATION} if policy.require_augmentation else {}
    asked = (data.folds, data.fold, data.validation_fraction, cfg.model.encoder_weights, cfg.train.device,
             *(getattr(data, k) for k in augmentation))
    # assigned together: folds and fold are checked against each other
    bounded.data = DataConfig.model_validate({**data.model_dump(), "folds": own.folds, "fold": own.fold,
                                              "validation_fraction": own.validation_fraction, **augmentation})
    bounded.model.encoder_weights = own.encoder_weights
    bounded.train.device = own.device
    bounded.tracking = TrackingConfig()
    kept = (own.folds, own.fold, own.validation_fraction, own.encoder_weights, own.device, *augmentation.values())
    if asked != kept or cfg.tracking != bounded.tracking:
        names = ["data.folds", "data.fold", "data.validation_fraction", "model.encoder_weights", "train.device",
                 *(f"data.{k}" for k in augmentation)]
        print(f"pedseg site {site}: the run's {', '.join(names)} {asked} and tracking are the site's own here: "
              f"{kept}, no tracking", file=sys.stderr, flush=True)
    return bounded


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value}"
