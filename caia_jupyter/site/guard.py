"""The site guard: nothing runs at a site unless its own reviewers approved exactly that code.

`admit(app_dir, site_dir)` checks a deployed NVFLARE app as an exact allow-list of caia's file
set (`fileset`): each bundle file at its one place in the app (`app_path`), NVFLARE's own
signature files only as plain files in the app's folders, and nothing else: any other file,
folder, link, `__pycache__`, `.pyc`, `.pth` or second client config refuses the bundle, naming
its path in the app. Then it recomputes the bundle id from those bytes, finds an approval of it
signed by one of the site's trusted reviewer keys, checks the differential privacy the bundle
requests against the site's ceilings (`privacy_ceiling`), checks each released dataset (its whole table,
read as the catalog records) against the requested schema and standard (its violations counted
per rule: refused or recorded, as the site's policy says), checks the site's privacy policy
(`privacy_policy`: usable, and weight differences where its scope needs them), and writes the release
(`caia_release.json`) that the runtime and `ctx` read; under policy "report" it holds the report
(the rules, no count) of each dataset breaking its standard that the runtime sends the researcher
(`standard_reports`).

A refusal's text reaches the researcher, so it names the site, the bundle id and caia's reason,
never a site path or a data value; what the site's admin needs goes to the site's log. Admission
never crashes: whatever is wrong at the site, the answer is that site's refusal.
Every admission and refusal of a site whose directory opens is recorded in the site's audit log
(`audit`; the key id of the approval admitted with, or the refusal's reason). Admission fails
closed: when the log cannot be written, the guard takes back the release it wrote and refuses. A
refusal the log cannot record is refused all the same (and logged).
NVFLARE calls `admit` through `CaiaAppValidator` (a site's `app_validator`); the simulator target
calls it for every simulated site before any of that site's code runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from dataclasses import asdict
from datetime import datetime
from pathlib import Path, PurePosixPath

from nvflare.apis.app_validation import AppValidator

from ..contracts import schema, standard
from ..contracts.client_app import FLARE_FILES, app_path
from ..contracts.errors import CaiaError, SiteError
from ..contracts.fileset import MANIFEST, content_problems, is_statistics, listing_problems
from ..contracts.fsutil import loads_strict, write_json
from ..contracts.manifest import Manifest, bundle_id
from ..contracts.privacy import DifferentialPrivacy, exact
from . import audit
from .approvals import Approval, find_approval
from .privacy_policy import Policy, install, read_policy, scope_refusal
from .release import RELEASE, Release
from .sandbox import SandboxRequired, placement
from .sites import Site, open_site, read_dataset
from .statistics import RANGES_FILE, noise_seed, read_thresholds

log = logging.getLogger(__name__)
# The refusal of a site whose own caia directory is unusable (its name is unknown then).
MISCONFIGURED = "this site's caia guard is misconfigured, so it refuses every job (the site's log says why)"


class Refusal(CaiaError):
    """A site refuses to run a deployed app; the message is safe to show the researcher. `bundle_id`:
    the refused bundle's id, "" when the app holds no caia manifest; `detail`: the site's own words
    (its log and audit log keep them; never sent to the researcher)."""

    def __init__(self, message: str, bundle_id: str = "", detail: str = ""):
        super().__init__(message)
        self.bundle_id, self.detail = bundle_id, detail


class Unfit(CaiaError):
    """A release a site does not admit: the message is safe to show the researcher; `detail` (the
    site's own words) and `fix` are for the site's reviewers and admin."""

    def __init__(self, reason: str, detail: str = "", fix: str = ""):
        super().__init__(reason)
        self.detail, self.fix = detail, fix


def release_of(site: Site, requested: dict[str, dict], releases: dict[str, str],
               standards: dict[str, dict] | None = None) -> dict[str, dict]:
    """What `site` releases to a bundle requesting `requested` (its manifest's "datasets": name ->
    {"columns": schema, "standard": its bundle path, when set}) under `releases` (requested name ->
    catalog id): name -> {"path": absolute path, "read": how the table is read (`schema.detect`),
    "columns": the requested schema, "rows": its number of rows, and for a dataset with a standard
    in `standards` (name -> the standard, `standard.read_standard`) "violations": [[field, rule,
    rows], ...] of the released table (`standard.violations`; counts only)}. Admission and `caia approve`
    both check with this (`admissible`), so a reviewer cannot sign what the guard would refuse.

    Raises Unfit (one line naming the dataset and, for a schema that does not fit, the column) for
    no release when datasets are requested, a name the bundle does not request, a catalog id the
    site lacks, a file that cannot be read or a missing column or one of another kind, and, under the
    site policy standard_violations "refuse", data that breaks its standard: each rule it breaks, no
    count (a standard is a counting query: two counts above any threshold subtract from the number of
    rows to a small one); the exact counts are in `detail`, for the site.
    """
    if requested and not releases:
        raise Unfit(f"the bundle requests {', '.join(sorted(requested))} and no dataset is released to it",
                    fix="release each with --dataset NAME=CATALOG_ID")
    extra = sorted(set(releases) - set(requested))
    if extra:
        raise Unfit(f"the bundle does not request {', '.join(extra)}; it requests {', '.join(sorted(requested)) or 'no datasets'}")
    released = {}
    for name, catalog_id in releases.items():
        if catalog_id not in site.catalog:
            raise Unfit(f"the site has no dataset {catalog_id} in its catalog", fix="add it with `caia site add-dataset`")
        try:
            frame, source = read_dataset(site, catalog_id)
        except CaiaError as e:
            raise Unfit(f"released dataset {catalog_id} cannot be read at this site", str(e)) from e
        wanted = requested[name]["columns"]
        problems = schema.mismatches(wanted, frame)
        if problems:
            raise Unfit(f"released dataset {catalog_id} does not fit the requested schema of {name!r}: {'; '.join(problems)}")
        released[name] = {**source, "columns": wanted, "rows": len(frame)}  # ctx.dataset reads the table as it was read here
        if name in (standards or {}):
            broken = standard.violations(frame, standards[name])
            if broken and site.standard_violations == "refuse":
                raise Unfit(f"dataset {name} breaks its standard: {standard.report(name, broken).rules()}; the site's policy refuses "
                            "data that breaks the bundle's standard (the site fixes its data, or the researcher the standard)",
                            f"exact counts at the site: {standard.summary(broken)}")
            released[name]["violations"] = [[v.field, v.rule, v.count] for v in broken]
    return released


def standards_of(manifest: dict, files: dict[str, bytes]) -> dict[str, dict]:
    """Requested dataset name -> its standard (`standard.read_standard`) from the bundle's file bytes
    (`files`: bundle path -> bytes, already checked against the manifest). Raises Unfit for one caia
    cannot read (the bundle's content checks refuse that first)."""
    try:
        return standard.bundle_standards(manifest, files.__getitem__)
    except (CaiaError, KeyError) as e:
        raise Unfit("its dataset standard cannot be read; rebuild it", str(e)) from e


def violations_text(released: dict[str, dict]) -> str:
    """"dataset tumours breaks its standard: age maximum (7 rows)", one clause per released dataset
    that breaks its standard; "" when none does."""
    return "; ".join(f"dataset {name} breaks its standard: "
                     + standard.summary([standard.Violation(*v) for v in spec["violations"]])
                     for name, spec in released.items() if spec.get("violations"))


def standard_reports(released: dict[str, dict]) -> list[dict]:
    """What a site's runtime tells the researcher of the `released` datasets (`release_of`) that break
    their standard: one `standard.Report` each (as a dict), the rules and no count."""
    return [standard.report(name, [standard.Violation(*v) for v in spec["violations"]]).model_dump()
            for name, spec in released.items() if spec.get("violations")]


def privacy_ceiling(job: dict, approved: float | None, policy: float | None, rows: int = 0) -> None:
    """Check the differential privacy a bundle requests (its manifest's "job": "privacy" absent, or
    {"epsilon": ..., "delta": ...}) against a site's ceilings: `approved`, the approval's max_epsilon, and
    `policy`, the site policy's max_epsilon (None: not set). The lower one set applies: the bundle
    must request DP with an epsilon at most that. Whatever the ceilings, a DP request's delta must
    be below 1/`rows`, `rows` the largest number of rows of a dataset released to it here (0: none
    known): (epsilon, delta)-DP with delta >= 1/rows admits publishing a record outright.
    Admission and `caia approve` both check with this (`admissible`), so a reviewer cannot sign
    what the guard would refuse. Numbers are shown exactly as compared (`privacy.exact`).

    Raises Unfit (one line with the numbers, where the ceiling is set, and the fix) for a bundle
    requesting a larger epsilon, none where a ceiling is set, a delta not below 1/rows, or a request
    that is not a `DifferentialPrivacy`.
    """
    ceilings = [(value, where) for value, where in ((policy, "its policy"), (approved, "its approval")) if value is not None]
    try:
        privacy = DifferentialPrivacy.model_validate(job["privacy"]) if job.get("privacy") else None
    except ValueError:  # pydantic's ValidationError: a manifest's model refuses it already; never a crash here
        raise Unfit("its differential privacy request is malformed; rebuild it with privacy=dp epsilon=... delta=...") from None
    if ceilings:
        ceiling, where = min(ceilings, key=lambda c: c[0])
        if not privacy:
            raise Unfit(f"it requests no differential privacy, which this site requires (epsilon at most {exact(ceiling)}, "
                        f"set in {where}); add privacy=dp epsilon=... delta=...")
        if privacy.epsilon > ceiling:
            raise Unfit(f"it requests epsilon {exact(privacy.epsilon)}, above this site's ceiling of {exact(ceiling)} "
                        f"(set in {where}); ask for privacy=dp epsilon<={exact(ceiling)}")
    if privacy and rows and privacy.delta * rows >= 1:
        raise Unfit(f"it requests delta {exact(privacy.delta)}, not below one over the rows of the largest dataset "
                    f"released to it here; ask for privacy=dp delta=... well below that, such as {exact(_suggested_delta(rows))}",
                    f"delta {exact(privacy.delta)} is not below 1/{rows}")  # the count stays at the site


def _suggested_delta(rows: int) -> float:
    """A power of ten at most 1/(10 rows): the usual "well below 1/N"."""
    return 10.0 ** -math.ceil(math.log10(10 * rows))


def policy_fit(site: Site, job: dict) -> Policy | None:
    """The site's privacy policy (`privacy_policy.read_policy`), if the site can run a bundle whose
    manifest's job is `job` under it. Raises Unfit for a privacy.json that is unusable (its problem
    is the Unfit's detail, for the site) or a default scope the bundle's updates cannot pass
    (`privacy_policy.scope_refusal`)."""
    try:
        policy = read_policy(site.path)
    except SiteError as e:
        raise Unfit("its privacy policy (privacy.json) is unusable, so it refuses every job (the site's log says why)",
                    str(e), fix="the site's admin fixes privacy.json (`caia site show` names the problem)") from e
    refusal = scope_refusal(policy, job)
    if refusal:
        raise Unfit(refusal)
    return policy


def admissible(site: Site, manifest: dict, releases: dict[str, str], approved: float | None,
               standards: dict[str, dict] | None = None) -> dict[str, dict]:
    """What `site` releases to a bundle with `manifest` under `releases` (requested name -> catalog
    id) and an approval whose ceiling is `approved` (None: none), if its guard admits it: its privacy
    policy (`policy_fit`), the released datasets (`release_of`, against `standards`) and the privacy request
    (`privacy_ceiling`, delta against the released rows). The guard at admission and `caia approve`
    both call this. Raises Unfit (one line, as those do)."""
    job = manifest["job"]
    policy_fit(site, job)
    released = release_of(site, manifest["datasets"], releases, standards)
    privacy_ceiling(job, approved, site.max_epsilon, max((d["rows"] for d in released.values()), default=0))
    return released


def check_app(app_dir: str | Path, site: Site, now: datetime | None = None, sandbox: str = "required") -> Release:
    """The release of a deployed app at `site`, or Refusal. `sandbox` is the policy of a site whose
    site.json sets none (`sites.SANDBOX_POLICIES`). Raises nothing else for a bad app; a broken site
    directory may raise (admit turns that into a refusal)."""
    return _checked(app_dir, site, now, sandbox)[0]


def _checked(app_dir: str | Path, site: Site, now: datetime | None, sandbox: str) -> tuple[Release, Approval]:
    """`check_app`, and the approval it admits with."""
    app_dir = Path(app_dir)
    manifest, bid = _deployed_manifest(app_dir, site)

    def refuse(reason: str, detail: str = ""):
        if detail:
            log.warning("caia guard, %s, bundle %s: %s", site.name, bid, detail)
        raise Refusal(f"{site.name} refused bundle {bid}: {reason}", bid, detail)

    listed = manifest["files"]
    problems = listing_problems(listed, manifest["job"])
    if problems:
        refuse(problems[0])
    deployed = _deployed_files(app_dir, {app_path(name): name for name in [*listed, MANIFEST]}, refuse)
    for name, entry in listed.items():
        if name not in deployed:
            refuse(f"the deployed app lacks {name} of the bundle")
        if hashlib.sha256(deployed[name]).hexdigest() != entry["sha256"]:
            refuse(f"{name} differs from the bundle's manifest (tampered?)")
        problems = content_problems(name, deployed[name], entry, manifest["job"])
        if problems:
            refuse(problems[0])

    try:
        policy_fit(site, manifest["job"])  # before the approvals: an unusable policy refuses every job
    except Unfit as e:
        refuse(str(e), e.detail)

    requested = set(manifest["datasets"])
    approval, reasons = find_approval(site, bid, requested, now)
    if approval is None:
        refuse(reasons[0] if reasons else "no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)")
    try:
        released = admissible(site, manifest, approval.datasets, approval.max_epsilon, standards_of(manifest, deployed))
    except Unfit as e:
        refuse(str(e), e.detail)
    try:
        placed = placement(site.sandbox or sandbox)
    except SandboxRequired as e:
        refuse(str(e))
    job = manifest["job"]
    statistics = None
    if is_statistics(job):
        try:
            statistics = {"spec": job["statistics"], "thresholds": asdict(read_thresholds(site.path)),
                          "noise_seed": noise_seed(site.path), "ranges": str(Path(site.path) / RANGES_FILE)}
        except SiteError as e:
            refuse("its statistics thresholds (statistics.json) or noise key are unusable, so it refuses every "
                   "statistics bundle (the site's log says why)", str(e))
    return Release(site.name, bid, released, job.get("params", {}), job["rounds"], approval.path.name if approval.path else "",
                   {name: entry["sha256"] for name, entry in listed.items()}, placed, job.get("privacy"),
                   job.get("encryption"), statistics, standard_reports(released)), approval


def admit(app_dir: str | Path, site_dir: str | Path, now: datetime | None = None, sandbox: str = "required",
          privacy_file: str | Path | None = None) -> Release:
    """Check a deployed app for the site at `site_dir`; on success write its release into the app
    and, given `privacy_file` (the NVFLARE site's local/privacy.json), install the site's privacy
    policy there (`privacy.install`), so the job NVFLARE starts next applies it.
    `sandbox`: the policy of a site that sets none ("required" at POC and production sites).

    Records the admission or refusal in the site's audit log (`audit.record`); an admission the
    log cannot record is refused (its release removed again).

    Raises Refusal, and only Refusal, when the site does not run it.
    """
    try:
        site = open_site(site_dir)
    except Exception as e:
        log.error("caia guard: the site directory %s is unusable: %s", site_dir, e)
        raise Refusal(MISCONFIGURED) from e
    try:
        release, approval = _checked(app_dir, site, now, sandbox)
        write_json(Path(app_dir) / RELEASE, asdict(release))
        if privacy_file:
            install(read_policy(site.path), privacy_file)
    except Refusal as e:
        _record_refusal(site, e, now)
        raise
    except Exception as e:  # a malformed file at the site: this site refuses, the federation goes on
        log.exception("caia guard, %s: could not check the app at %s", site.name, app_dir)
        refusal = Refusal(f"{site.name} refused the job: its guard could not check it (the site's log says why)")
        _record_refusal(site, refusal, now)
        raise refusal from e
    broken = violations_text(release.datasets)
    if broken:  # policy "report": admitted, and the counts recorded at the site
        log.warning("caia guard, %s, bundle %s: %s", site.name, release.bundle_id, broken)
    try:
        audit.record(site, "admission", release.bundle_id, approval.key_id, "admitted", broken, now=now)
    except Exception as e:  # fail closed: nothing runs at a site that its audit log does not show
        log.exception("caia guard, %s: could not record the admission of bundle %s in its audit log", site.name, release.bundle_id)
        (Path(app_dir) / RELEASE).unlink(missing_ok=True)
        raise Refusal(f"{site.name} refused bundle {release.bundle_id}: its guard could not write the site's audit log "
                      "(the site's log says why)", release.bundle_id) from e
    return release


def _record_refusal(site: Site, refusal: Refusal, now: datetime | None) -> None:
    """Record a refusal in the site's audit log; one that cannot be written is logged (the job is refused anyway)."""
    try:
        detail = f" ({refusal.detail})" if refusal.detail else ""
        audit.record(site, "refusal", refusal.bundle_id, None, "refused", f"{refusal}{detail}", now=now)
    except Exception:
        log.exception("caia guard, %s: could not record a refusal in its audit log", site.name)


def _deployed_manifest(app_dir: Path, site: Site) -> tuple[dict, str]:
    file = app_dir / app_path(MANIFEST)
    try:
        if not stat.S_ISREG(file.lstat().st_mode):
            raise ValueError("not a plain file")
        manifest = loads_strict(file.read_bytes())
        Manifest.model_validate(manifest)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        log.warning("caia guard, %s: %s is not a caia manifest: %s", site.name, file, e)
        raise Refusal(f"{site.name} refused the job: it is not a caia bundle ({app_path(MANIFEST)} is missing or invalid); "
                      "submit it with `caia submit`") from e
    return manifest, bundle_id(manifest)


def _deployed_files(app_dir: Path, expected: dict[str, str], refuse) -> dict[str, bytes]:
    """Bundle path -> bytes of every expected app file; any path not allowed refuses (links never followed)."""
    folders = {"."} | {str(PurePosixPath(path).parent) for path in expected}
    found = {}
    for folder, dirs, files in os.walk(app_dir):
        here = Path(folder).relative_to(app_dir)
        for name in sorted(dirs + files):
            relative = (here / name).as_posix()
            mode = (Path(folder) / name).lstat().st_mode
            if stat.S_ISDIR(mode):
                if relative not in folders:
                    refuse(f"the deployed app holds the folder {relative}/, which is not part of the bundle")
            elif not stat.S_ISREG(mode):
                refuse(f"the deployed app holds {relative}, which is not a plain file")
            elif name in FLARE_FILES:
                continue  # NVFLARE's job signature, one in every folder of a signed app
            elif relative not in expected:
                refuse(f"the deployed app holds {relative}, which is not part of the bundle")
            else:
                found[expected[relative]] = (Path(folder) / name).read_bytes()
    return found


class CaiaAppValidator(AppValidator):
    """NVFLARE `app_validator` for a site's local/resources.json: {"path": this class, "args": {"site_dir": ...,
    "privacy_file": the site's local/privacy.json}}."""

    def __init__(self, site_dir: str, privacy_file: str = ""):
        super().__init__()
        self.site_dir = site_dir
        self.privacy_file = privacy_file

    def validate(self, app_folder: str) -> tuple[str, dict]:
        try:
            admit(app_folder, self.site_dir, privacy_file=self.privacy_file or None)
        except Refusal as e:
            return str(e), {}
        return "", {}
