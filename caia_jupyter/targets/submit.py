"""Submitting a bundle: the checks every target shares, then the target itself."""

from __future__ import annotations

from pathlib import Path

from ..contracts.errors import CaiaError
from ..researcher import bundle as bundles
from ..researcher.runs import Run
from ..researcher.validation import require_passed
from ..researcher.wording import plural
from ..site.sites import check_site_name, open_site


def submit(bundle_path: str | Path, sites: list[str | Path] | None = None, target: str = "simulator",
           runs_root: str | Path = "runs", poc_workspace: str | Path | None = None,
           startup_kit: str | Path | None = None, username: str | None = None, round_timeout: int | None = None) -> Run:
    """Run an intact, validated bundle; returns the run's handle at once.

    simulator: `sites` are site directories on this machine.
    poc: `sites` are site names of the POC at `poc_workspace` (default: all of them).
    prod: `sites` are site names of the federation `startup_kit` (an admin kit) reaches as `username`.

    Before anything starts (no run directory, no NVFLARE process), raises CaiaError (exit 2) for a
    bundle not intact or not validated, a site name NVFLARE cannot use, or fewer sites than the
    bundle's `min_clients`.
    """
    bundle = bundles.require_intact(bundle_path)
    require_passed(bundle)
    if target == "simulator":
        from .simulator import submit as simulate

        if not sites:
            raise CaiaError("--sites is required: the site directories to run at")
        named = {}
        for directory in sites:
            site = open_site(directory)
            if site.name in named:
                raise CaiaError(f"{site.path} is given twice" if site.path == named[site.name] else
                                f"two site directories are named {site.name}: {named[site.name]} and {site.path}")
            named[site.name] = site.path
        check_sites(bundle, list(named))
        return simulate(bundle, named, Path(runs_root))

    from . import remote

    timeout = {"round_timeout": round_timeout} if round_timeout else {}
    if target == "poc":
        from .poc import ADMIN, DEFAULT_POC, open_poc

        poc = open_poc(poc_workspace or DEFAULT_POC)
        names = [str(s) for s in sites] if sites else poc.site_names
        unknown = sorted(set(names) - set(poc.site_names))
        if unknown:
            raise CaiaError(f"the POC has no site {', '.join(unknown)}; its sites are {', '.join(poc.site_names)}")
        check_sites(bundle, names)
        if bundle.manifest["job"].get("encryption"):
            poc.require_he(bundle.short_id)
        return remote.submit(bundle, names, Path(runs_root), "poc", poc.admin_kit, ADMIN, **timeout)
    if target == "prod":
        if not startup_kit or not username:
            raise CaiaError("--target prod needs --startup-kit DIR (your admin kit) and --username NAME")
        if not sites:
            raise CaiaError("--sites is required with --target prod: the site names to run at")
        names = [str(s) for s in sites]
        check_sites(bundle, names)
        return remote.submit(bundle, names, Path(runs_root), "prod", Path(startup_kit), username, **timeout)
    raise CaiaError(f"unknown target {target!r}; use simulator, poc or prod")


def check_sites(bundle: bundles.Bundle, names: list[str]) -> None:
    """Refuse, in one line (CaiaError), sites a run of `bundle` could never start with: a name NVFLARE
    cannot use as a client name, or fewer distinct sites than the bundle's `min_clients`."""
    for name in names:
        check_site_name(name)
    sites = sorted(set(names))
    need = bundle.manifest["job"]["min_clients"]
    if len(sites) < need:
        raise CaiaError(f"min_clients is {need} but {plural(len(sites), 'site')} given ({', '.join(sites)}); give at least "
                        f"{plural(need, 'site')} with --sites, or set min_clients={len(sites)} in the %%federated header "
                        "and bundle and validate again")
