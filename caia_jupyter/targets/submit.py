"""Submitting a bundle: the checks every target shares, then the target itself.

Submitting a notebook builds the bundle of the saved notebook and refuses it, in one line
(SubmitRefused), unless it is ready (`check_ready`): that exact id passed validation, is approved at
every site directory the simulator would run it at (POC and production sites check their approvals
themselves), and no run of it is live under the same runs folder (unless `concurrent`). The panel
shows the same verdict before a click (`overview.notebook`'s "submit").
"""

from __future__ import annotations

import os
import shlex
import threading
from pathlib import Path

from ..contracts.errors import CaiaError, SubmitRefused, ValidationFailed
from ..contracts.fsutil import read_json
from ..researcher import bundle as bundles
from ..researcher.runs import FINAL, Run
from ..researcher.validation import require_passed
from ..researcher.wording import plural
from ..site.approvals import find_approval
from ..site.sites import Site, check_site_name, open_site

# Checking that no run of a bundle id is live and starting one happen as one step in this process
# (two clicks on Submit start one run).
_STARTING = threading.Lock()


def submit(source: str | Path, sites: list[str | Path] | None = None, target: str = "simulator",
           runs_root: str | Path = "runs", poc_workspace: str | Path | None = None,
           startup_kit: str | Path | None = None, username: str | None = None, round_timeout: int | None = None,
           concurrent: bool = False, namespace=None, relative_to: Path | None = None) -> Run:
    """Run a notebook's bundle, or an intact, validated bundle folder; returns the run's handle at once.

    `source`: a saved notebook (.ipynb; `namespace`, a kernel's, resolves its free names), built into
    its default bundle folder once `check_ready` passes; or a bundle folder, which must be validated
    (its sites check their approvals). `relative_to`: paths in refusals are relative to it (default: the
    current directory). simulator: `sites` are site directories on this machine.
    poc: `sites` are site names of the POC at `poc_workspace` (default: all of them).
    prod: `sites` are site names of the federation `startup_kit` (an admin kit) reaches as `username`.

    Before anything starts (no run directory, no NVFLARE process), raises SubmitRefused (exit 2, HTTP
    409) for a bundle not ready (`check_ready`), CaiaError for a bundle not intact, a site name NVFLARE
    cannot use, or fewer sites than the bundle's `min_clients`.
    """
    notebook = Path(source) if Path(source).suffix == ".ipynb" else None
    if notebook is not None:
        from ..researcher.compose import compose, default_output

        composed = compose(notebook, namespace)
        bundle = bundles.Bundle(default_output(notebook), composed.id, composed.manifest)
    else:
        composed, bundle = None, bundles.require_intact(source)
    with _STARTING:
        check_ready(bundle, runs_root, target, sites, concurrent, notebook, relative_to)
        site_dirs = simulator_sites(sites, relative_to) if target == "simulator" else None
        if composed is not None:
            from ..researcher.compose import write

            bundle = write(composed)
        return _start(bundle, site_dirs, sites, target, Path(runs_root), poc_workspace, startup_kit, username,
                      round_timeout)


def simulator_sites(sites: list[str | Path] | None, relative_to: Path | None = None) -> dict[str, Path]:
    """Site name -> directory of the simulator's `sites` (directories); raises CaiaError when none is
    given, one is no site, or two have one name, its paths relative to `relative_to` (`shown`)."""
    if not sites:
        raise CaiaError("no site directories to run at: give them with --sites (the panel: put them in sites/ beside the notebook)")
    named = {}
    for directory in sites:
        site = open_site_shown(directory, relative_to)
        if site.name in named:
            first, again = shown(named[site.name], relative_to), shown(site.path, relative_to)
            raise CaiaError(f"{again} is given twice" if site.path == named[site.name] else
                            f"two site directories are named {site.name}: {first} and {again}")
        named[site.name] = site.path
    return named


def open_site_shown(directory: str | Path, relative_to: Path | None = None) -> Site:
    """`open_site(directory)`, whose error (the same CaiaError type, one line) names the directory as
    `shown` gives it, relative to `relative_to`, not as an absolute path of this machine."""
    try:
        return open_site(directory)
    except CaiaError as e:
        text = str(e)
        for form in dict.fromkeys((str(Path(directory).resolve()), os.path.abspath(directory))):
            text = text.replace(form, shown(directory, relative_to))
        raise type(e)(text) from None


def check_ready(bundle: bundles.Bundle, runs_root: str | Path, target: str = "simulator",
                sites: list[str | Path] | None = None, concurrent: bool = False, notebook: Path | None = None,
                relative_to: Path | None = None) -> None:
    """Refuse, in one line, a run of `bundle` (its folder need not exist yet) that is not ready, with
    SubmitRefused: its exact id has no passing validation record; submitted from `notebook` to the
    simulator, a site of `sites` (directories) has no valid approval of it (the line names the command
    its reviewer runs; POC and production sites, and a bundle folder given as such, are left to the
    sites' own check); a run of it is live under `runs_root` and `concurrent` is false. CaiaError for
    site directories that are none (`simulator_sites`). Paths in the line are relative to
    `relative_to` (default: the current directory) when under it."""
    how = f"Validate (caia validate {shown(notebook, relative_to)})" if notebook else f"caia validate {shown(bundle.path, relative_to)}"
    try:
        require_passed(bundle, how)
    except ValidationFailed as e:
        raise SubmitRefused(str(e)) from None
    site_dirs = simulator_sites(sites, relative_to) if notebook and target == "simulator" else {}
    for name, directory in site_dirs.items():
        site = open_site_shown(directory, relative_to)
        approval, reasons = find_approval(site, bundle.id, set(bundle.manifest["datasets"]))
        if approval is None:
            why = f": {reasons[0]}" if reasons else ""
            raise SubmitRefused(f"{name} has not approved bundle {bundle.short_id}{why}; its reviewer runs: "
                                f"{approve_command(bundle, site, relative_to)}")
    if not concurrent:
        live = live_runs(runs_root, bundle.id)
        if live:
            raise SubmitRefused(f"bundle {bundle.short_id} is already running in {shown(live[0], relative_to)}; wait "
                                "for it or abort it (a second run at once: caia submit --concurrent)")


def live_runs(runs_root: str | Path, bundle_id: str) -> list[Path]:
    """Run folders under `runs_root` of `bundle_id` whose run has not ended (`Run.status` not in FINAL),
    newest name first; a folder that is no run is left out."""
    root = Path(runs_root)
    found = []
    for folder in sorted(root.iterdir(), reverse=True) if root.is_dir() else ():
        if read_json(folder / "run.json").get("bundle_id") != bundle_id:
            continue
        try:
            if Run(folder).status not in FINAL:
                found.append(folder)
        except CaiaError:
            continue
    return found


def approve_command(bundle: bundles.Bundle, site: Site, relative_to: Path | None = None) -> str:
    """The `caia approve` command line a site's reviewer runs to approve `bundle` at `site`, ready to
    copy but for the reviewer's key file (KEY): each requested dataset released from the catalog entry
    of the same name when the site has one, else from a placeholder <catalog id>."""
    try:
        catalog = site.catalog
    except CaiaError:
        catalog = {}
    releases = [f"--dataset {name if name in catalog else shlex.quote(name) + '=<catalog id>'}"
                for name in sorted(bundle.manifest["datasets"])]
    return " ".join(["caia approve", shlex.quote(shown(bundle.path, relative_to)), "--site",
                     shlex.quote(shown(site.path, relative_to)), "--key KEY", *releases])


def shown(path: Path, relative_to: Path | None = None) -> str:
    """`path` relative to `relative_to` (default: the current directory) when it is under it, else absolute."""
    base = Path(relative_to or os.getcwd()).resolve()
    full = Path(os.path.abspath(path))
    return full.relative_to(base).as_posix() if full.is_relative_to(base) else str(full)


def _start(bundle, site_dirs, sites, target, runs_root, poc_workspace, startup_kit, username, round_timeout) -> Run:
    if target == "simulator":
        from .simulator import submit as simulate

        check_sites(bundle, list(site_dirs))
        return simulate(bundle, site_dirs, runs_root)

    from . import remote

    timeout = {"round_timeout": round_timeout} if round_timeout else {}
    if target == "poc":
        from .poc import ADMIN

        poc, names = poc_sites(poc_workspace, sites)
        check_sites(bundle, names)
        if bundle.manifest["job"].get("encryption"):
            poc.require_he(bundle.short_id)
        return remote.submit(bundle, names, runs_root, "poc", poc.admin_kit, ADMIN, **timeout)
    if target == "prod":
        if not startup_kit or not username:
            raise CaiaError("--target prod needs --startup-kit DIR (your admin kit) and --username NAME")
        if not sites:
            raise CaiaError("--sites is required with --target prod: the site names to run at")
        names = [str(s) for s in sites]
        check_sites(bundle, names)
        return remote.submit(bundle, names, runs_root, "prod", Path(startup_kit), username, **timeout)
    raise CaiaError(f"unknown target {target!r}; use simulator, poc or prod")


def poc_sites(poc_workspace: str | Path | None, sites: list[str | Path] | None):
    """(Poc, site names) of the POC at `poc_workspace` (default: poc.DEFAULT_POC): `sites` as names, or
    all of its sites. Raises FlareError for a folder that is no caia POC, CaiaError for a name it has no site of."""
    from .poc import DEFAULT_POC, open_poc

    poc = open_poc(poc_workspace or DEFAULT_POC)
    names = [str(s) for s in sites] if sites else poc.site_names
    unknown = sorted(set(names) - set(poc.site_names))
    if unknown:
        raise CaiaError(f"the POC has no site {', '.join(unknown)}; its sites are {', '.join(poc.site_names)}")
    return poc, names


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
