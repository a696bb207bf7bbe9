"""Where a run launched by pedseg keeps each site's state on this machine: `RUN/sites/<site>/` (the
`pedseg-client --state-dir` of a loopback site, the ClientApp's `state-dir` in a simulation)."""

from __future__ import annotations

from pathlib import Path

from pedseg_core.train.private_store import PrivateStore


def site_state_dir(run_dir: Path, site: str) -> Path:
    return run_dir / "sites" / site


def personalized_models(run_dir: Path) -> dict[str, Path]:
    """{site: its personalized model} for every site of a run folder (a RUN holds one run per site; with
    several, the last run folder in name order)."""
    sites = sorted(p for p in (run_dir / "sites").iterdir() if p.is_dir()) if (run_dir / "sites").is_dir() else []
    return {site.name: models[-1] for site in sites if (models := PrivateStore.models_in(site))}
