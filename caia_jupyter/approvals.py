"""Signed approvals: a site's reviewer releases datasets to one exact bundle id.

An approval file holds a statement and its Ed25519 signature over the statement's
canonical JSON. A site accepts it only if one of its own trusted keys signed it, for
this site, this bundle id, datasets in its catalog, and it has not expired.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from .errors import ApprovalRejected, SiteError
from .fsutil import write_json
from .manifest import canonical
from .sites import Site, key_id, load_private_key

FORMAT = "caia-approval/1"
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Approval:
    site: str
    bundle_id: str
    datasets: dict[str, str]  # requested dataset name -> catalog dataset id
    key_id: str
    issued_at: datetime
    expires_at: datetime
    path: Path | None = None

    def to_json(self) -> dict:
        return {"site": self.site, "bundle_id": self.bundle_id, "datasets": self.datasets, "key_id": self.key_id,
                "issued_at": _iso(self.issued_at), "expires_at": _iso(self.expires_at),
                "path": str(self.path) if self.path else None}


def approve(site: Site, bundle_id: str, datasets: dict[str, str], expires_in_days: float = 30,
            key_file: Path | None = None, output: Path | None = None, now: datetime | None = None) -> Approval:
    """Sign an approval with a reviewer key and store it in the site's approvals (or `output`)."""
    if expires_in_days <= 0:
        raise SiteError(f"--expires-in {expires_in_days} must be a positive number of days")
    private = load_private_key(key_file or site.reviewer_key_file())
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    statement = {
        "format": FORMAT,
        "site": site.name,
        "bundle_id": bundle_id,
        "datasets": dict(sorted(datasets.items())),
        "key_id": key_id(private.public_key()),
        "issued_at": _iso(issued),
        "expires_at": _iso(issued + timedelta(days=expires_in_days)),
    }
    signature = base64.b64encode(private.sign(canonical(statement))).decode()
    path = output or site.approvals_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}.json"
    write_json(path, {"statement": statement, "signature": signature})
    return _approval(statement, path)


def verify_approval(approval: dict | Path, site: Site, bundle_id: str, requested: set[str] | None = None,
                    now: datetime | None = None) -> Approval:
    """Check signature, trusted key, site, bundle id, datasets and expiry; raise ApprovalRejected(reason)."""
    path = approval if isinstance(approval, Path) else None
    if path is not None:
        try:
            approval = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ApprovalRejected(f"approval {path.name} is unreadable: {e}") from e
    where = f"approval {path.name}" if path else "approval"
    try:
        statement, signature = approval["statement"], base64.b64decode(approval["signature"], validate=True)
        if statement.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        issued, expires = _time(statement["issued_at"]), _time(statement["expires_at"])
        kid, datasets = statement["key_id"], statement["datasets"]
        if not isinstance(datasets, dict):
            raise ValueError("datasets is not an object")
    except (KeyError, TypeError, ValueError) as e:
        raise ApprovalRejected(f"{where} is malformed ({e}); ask the reviewer to sign it again") from e

    key = site.trusted_keys().get(kid)
    if key is None:
        raise ApprovalRejected(f"{where} is signed by key {kid}, which site {site.name} does not trust")
    try:
        key.verify(signature, canonical(statement))
    except InvalidSignature:
        raise ApprovalRejected(f"{where} has a signature that does not match its content (altered after signing)") from None
    if statement.get("site") != site.name:
        raise ApprovalRejected(f"{where} is for site {statement.get('site')!r}, not {site.name!r}")
    if statement.get("bundle_id") != bundle_id:
        raise ApprovalRejected(f"{where} approves bundle {statement.get('bundle_id')}, not {bundle_id}")
    catalog = site.catalog
    unknown = sorted(set(datasets.values()) - set(catalog))
    if unknown:
        raise ApprovalRejected(f"{where} releases {', '.join(unknown)}, not in site {site.name}'s catalog")
    if requested is not None and set(datasets) - requested:
        extra = ", ".join(sorted(set(datasets) - requested))
        raise ApprovalRejected(f"{where} releases {extra}, which the bundle does not request")
    now = now or datetime.now(timezone.utc)
    if expires <= now:
        raise ApprovalRejected(f"{where} expired at {_iso(expires)}; ask a reviewer to approve the bundle again")
    if issued > now + CLOCK_SKEW:
        raise ApprovalRejected(f"{where} is issued in the future ({_iso(issued)}); check the clocks")
    return _approval(statement, path)


def find_approval(site: Site, bundle_id: str, requested: set[str] | None = None,
                  now: datetime | None = None) -> tuple[Approval | None, list[str]]:
    """The first valid approval of `bundle_id` in the site's store, and why others were rejected."""
    reasons = []
    for file in sorted(site.approvals_dir.glob("*.json")):
        try:
            if json.loads(file.read_text(encoding="utf-8"))["statement"]["bundle_id"] != bundle_id:
                continue  # an approval of another bundle says nothing about this one
        except (OSError, ValueError, KeyError, TypeError):
            pass  # verify_approval names what is wrong with it
        try:
            return verify_approval(file, site, bundle_id, requested, now), reasons
        except ApprovalRejected as e:
            reasons.append(str(e))
    return None, reasons


def parse_releases(values: list[str]) -> dict[str, str]:
    """`--dataset NAME` or `--dataset NAME=CATALOG_ID` -> {requested name: catalog id}."""
    releases = {}
    for value in values:
        name, _, catalog_id = value.partition("=")
        releases[name] = catalog_id or name
    return releases


def _approval(statement: dict, path: Path | None) -> Approval:
    return Approval(statement["site"], statement["bundle_id"], dict(statement["datasets"]), statement["key_id"],
                    _time(statement["issued_at"]), _time(statement["expires_at"]), path)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return moment
