"""Submitting a bundle: the checks every target shares, then the target itself."""

from __future__ import annotations

from pathlib import Path

from . import bundle as bundles
from .errors import CaiaError
from .runs import Run
from .sites import open_site
from .validation import require_passed


def submit(bundle_path: str | Path, site_dirs: list[str | Path], target: str = "simulator",
           runs_root: str | Path = "runs") -> Run:
    """Run an intact, validated bundle at the given sites; returns the run handle at once."""
    bundle = bundles.require_intact(bundle_path)
    require_passed(bundle)
    sites = {}
    for directory in site_dirs:
        site = open_site(directory)
        if site.name in sites:
            raise CaiaError(f"two site directories are named {site.name}: {sites[site.name]} and {site.path}")
        sites[site.name] = site.path
    if target == "simulator":
        from .flare.simulator import submit as simulate

        return simulate(bundle, sites, Path(runs_root))
    raise CaiaError(f"unknown target {target!r}; use simulator")
