"""The site guard: nothing runs at a site unless its own reviewers approved that exact code.

`admit(app_dir, site_dir)` recomputes the bundle id of a deployed NVFLARE app (custom code
and config), finds a valid approval for it, checks that each released dataset exists and
has the requested columns, and writes the release (`caia_release.json`) that `ctx` reads.
Otherwise it raises `Refusal` naming the site and the bundle id. NVFLARE calls it through
`CaiaAppValidator` (a site's `app_validator`); the simulator target calls it for every
simulated site before that site's code runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from nvflare.apis.app_validation import AppValidator

from .. import schema
from ..approvals import find_approval
from ..errors import CaiaError
from ..fsutil import write_json
from ..manifest import Manifest, bundle_id
from ..sites import Site, open_site
from .app import FLARE_FILES, bundle_path
from .release import RELEASE, Release


class Refusal(CaiaError):
    """A site refuses to run a deployed app."""


def check_app(app_dir: str | Path, site: Site, now: datetime | None = None) -> Release:
    app_dir = Path(app_dir)
    manifest, bid = _deployed_manifest(app_dir, site)

    def refuse(reason: str):
        raise Refusal(f"{site.name} refused bundle {bid}: {reason}")

    listed = manifest.get("files", {})
    deployed = {}
    for file in sorted(p for p in app_dir.rglob("*") if not p.is_dir()):
        relative = file.relative_to(app_dir).as_posix()
        if file.name in FLARE_FILES or "__pycache__" in file.parts or relative == RELEASE:
            continue
        name = bundle_path(relative)
        if name is None or (name not in listed and name != "manifest.json"):
            refuse(f"the deployed app holds {relative}, which is not part of the bundle")
        deployed[name] = file
    for name, entry in listed.items():
        if name not in deployed:
            refuse(f"the deployed app lacks {name} of the bundle")
        if deployed[name].is_symlink() or hashlib.sha256(deployed[name].read_bytes()).hexdigest() != entry.get("sha256"):
            refuse(f"{name} differs from the bundle's manifest (tampered?)")

    requested = set(manifest.get("datasets", {}))
    approval, reasons = find_approval(site, bid, requested, now)
    if approval is None:
        refuse(reasons[0] if reasons else "no reviewer of this site approved this bundle id")

    released, catalog = {}, site.catalog
    for name, catalog_id in approval.datasets.items():
        path = catalog[catalog_id]["path"]
        if not Path(path).is_file():
            refuse(f"released dataset {catalog_id} is missing at {path}")
        wanted = manifest["datasets"][name]["columns"]
        problems = schema.mismatches(wanted, schema.columns_of(path))
        if problems:
            refuse(f"released dataset {catalog_id} does not fit the requested schema of {name!r}: {'; '.join(problems)}")
        released[name] = {"path": path, "columns": wanted}
    job = manifest["job"]
    return Release(site.name, bid, released, job.get("params", {}), job["rounds"], approval.path.name if approval.path else "")


def admit(app_dir: str | Path, site_dir: str | Path, now: datetime | None = None) -> Release:
    """Check a deployed app for the site at `site_dir`; on success write its release into the app."""
    try:
        site = open_site(site_dir)
    except CaiaError as e:
        raise Refusal(f"caia site guard is misconfigured: {e}") from e
    release = check_app(app_dir, site, now)
    write_json(Path(app_dir) / RELEASE, asdict(release))
    return release


def _deployed_manifest(app_dir: Path, site: Site) -> tuple[dict, str]:
    file = app_dir / "custom" / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        Manifest.model_validate(manifest)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise Refusal(f"{site.name} refused the job: it is not a caia bundle ({file.name}: {e}); submit it with `caia submit`") from e
    return manifest, bundle_id(manifest)


class CaiaAppValidator(AppValidator):
    """NVFLARE `app_validator` for a site's local/resources.json: {"path": this class, "args": {"site_dir": ...}}."""

    def __init__(self, site_dir: str):
        super().__init__()
        self.site_dir = site_dir

    def validate(self, app_folder: str) -> tuple[str, dict]:
        try:
            admit(app_folder, self.site_dir)
        except CaiaError as e:
            return str(e), {}
        return "", {}
