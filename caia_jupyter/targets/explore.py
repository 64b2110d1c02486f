"""`caia explore`: a statistics bundle on the simulator or a POC, and its result.

Given a notebook, its `%federated explore` request (or the request's tokens) is made into a statistics
bundle. On the simulator it is refused in one line (SubmitRefused) unless every site directory
approved exactly that id; a bundle folder given as such, and any bundle on a POC, is left to the
sites' guards, which refuse it like any unapproved bundle and apply their own thresholds.
"""

from __future__ import annotations

from pathlib import Path

from ..contracts.errors import CaiaError, SubmitRefused
from ..contracts.fileset import is_statistics
from ..researcher import bundle as bundles
from ..researcher.explore import Result, statistics_bundle
from ..site.approvals import find_approval
from .submit import approve_command, check_sites, open_site_shown, poc_sites, simulator_sites


def explore(source: str | Path, sites: list[str | Path] | None, runs_root: str | Path = "runs",
            tokens: list[str] | None = None, timeout: float | None = 600, relative_to: Path | None = None,
            target: str = "simulator", poc_workspace: str | Path | None = None) -> tuple[Result | None, object]:
    """Run the statistics of `source` (a notebook: its request, or `tokens`; or a statistics bundle
    folder) and wait for it: (Result, Run), the Result None when the run did not finish (the Run says
    why: refusals, failures). target "simulator": `sites` are site directories, run on NVFLARE's
    simulator; "poc": `sites` are site names of the POC at `poc_workspace` (default: all of them), the
    job submitted to its server, each site's guard checking its own approvals.

    Raises NotebookError for a request the sample does not satisfy, SubmitRefused when a simulator site
    has not approved the notebook's bundle, CaiaError for a folder that is no intact statistics bundle,
    an unknown target or POC site, or sites fewer than its min_clients; FlareError for no POC there."""
    if target not in ("simulator", "poc"):
        raise CaiaError(f"unknown target {target!r} for caia explore; use simulator or poc")
    if Path(source).suffix == ".ipynb":
        bundle = statistics_bundle(source, tokens)
    else:
        bundle = bundles.require_intact(source)
        if not is_statistics(bundle.manifest["job"]):
            raise CaiaError(f"bundle {bundle.short_id} is a training bundle, not a statistics bundle; run it with `caia submit`")
    run = _poc(bundle, sites, runs_root, poc_workspace) if target == "poc" else \
        _simulator(bundle, sites, runs_root, relative_to, checked=Path(source).suffix == ".ipynb")
    run.wait(timeout)
    return (Result.read(run.path) if run.status == "finished" else None), run


def _simulator(bundle, sites, runs_root, relative_to, checked: bool):
    """Start `bundle` on the simulator; `checked`: refuse it first unless every site directory approved it."""
    from .simulator import submit

    site_dirs = simulator_sites(sites, relative_to)
    for name, directory in site_dirs.items() if checked else ():
        site = open_site_shown(directory, relative_to)
        approval, reasons = find_approval(site, bundle.id, set(bundle.manifest["datasets"]))
        if approval is None:
            raise SubmitRefused(f"{name} has not approved statistics bundle {bundle.short_id}"
                                f"{': ' + reasons[0] if reasons else ''}; its reviewer runs: "
                                f"{approve_command(bundle, site, relative_to)}")
    check_sites(bundle, list(site_dirs))
    return submit(bundle, site_dirs, Path(runs_root))


def _poc(bundle, sites, runs_root, poc_workspace):
    """Submit `bundle` to the POC's server as its admin, as `caia submit --target poc` does."""
    from . import remote
    from .poc import ADMIN

    poc, names = poc_sites(poc_workspace, sites)
    check_sites(bundle, names)
    return remote.submit(bundle, names, Path(runs_root), "poc", poc.admin_kit, ADMIN)
