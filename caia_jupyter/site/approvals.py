"""Verifying signed approvals and revocations at a site: a site's reviewer releases datasets to one
exact bundle id, and can take that back (reviewers sign them with `caia_jupyter.reviewer.signing`).

An approval file holds a statement and its Ed25519 signature over the statement's canonical
JSON:

    {"statement": {"format": "caia-approval/1", "site", "bundle_id", "datasets": {name: catalog id},
                   "key_id", "issued_at", "expires_at", optionally "max_epsilon"},
     "signature": base64}

"max_epsilon", when present (a finite number above 0), is the site's privacy ceiling for this
bundle: the guard admits it only if it requests differential privacy with an epsilon at most that
(`guard.privacy_ceiling`). Approvals signed without it stay valid.

A revocation file (in the site's revocations/) has the same shape, with the statement
{"format": "caia-revocation/1", "site", "bundle_id", "key_id", "issued_at", "reason"}: every
approval of that bundle id at that site issued at or before its time plus CLOCK_SKEW no longer
counts (a reviewer's clock may run that far ahead). A well-formed revocation counts whoever
signed it, a key the site no longer trusts included: it can only take authority away, and only
the site's admin puts files in revocations/.

A rejection file (in the site's rejections/) has the same shape, with the statement
{"format": "caia-rejection/1", "site", "bundle_id", "key_id", "issued_at", "reason"}: a reviewer's
signed record that they read the bundle and would not approve it, and why. It is a record for the
site (and its audit log), not a gate: a bundle without an approval is refused anyway.

A site accepts an approval only if one of its own trusted keys signed it, for this site and
this bundle id, releasing datasets in its catalog that the bundle requests, issued before it
expires, for no longer than the site's policy allows, not revoked and not expired. Every file
is untrusted input: anything malformed is a rejection with a one-line reason that names the
file, never the site's paths.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..contracts.errors import ApprovalRejected, CaiaError
from ..contracts.fsutil import loads_strict
from ..contracts.manifest import BUNDLE_ID, canonical
from .sites import Site, valid_epsilon

FORMAT = "caia-approval/1"
REVOCATION_FORMAT = "caia-revocation/1"
REJECTION_FORMAT = "caia-rejection/1"
CLOCK_SKEW = timedelta(minutes=5)
MAX_FILE_BYTES = 64 * 1024  # an approval is well under 1 KiB
_KEY_ID = re.compile(r"[0-9a-f]{16}")
# The fields of each kind of signed statement, and the kind of value each holds.
_APPROVAL_FIELDS = {"format": "text", "site": "text", "bundle_id": "bundle id", "datasets": "releases",
                    "key_id": "key id", "issued_at": "time", "expires_at": "time", "max_epsilon": "epsilon"}
_OPTIONAL_FIELDS = {"max_epsilon"}  # a statement may leave these out; approvals signed before they existed do
_REVOCATION_FIELDS = {"format": "text", "site": "text", "bundle_id": "bundle id", "key_id": "key id",
                      "issued_at": "time", "reason": "text"}
_REJECTION_FIELDS = _REVOCATION_FIELDS  # the same statement, another format
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Approval:
    site: str
    bundle_id: str
    datasets: dict[str, str]  # requested dataset name -> catalog dataset id
    key_id: str
    issued_at: datetime
    expires_at: datetime
    path: Path | None = None
    max_epsilon: float | None = None  # the site's privacy ceiling for this bundle; None: none set

    def to_json(self) -> dict:
        return {"site": self.site, "bundle_id": self.bundle_id, "datasets": self.datasets, "key_id": self.key_id,
                "issued_at": iso(self.issued_at), "expires_at": iso(self.expires_at), "max_epsilon": self.max_epsilon,
                "path": str(self.path) if self.path else None}


@dataclass(frozen=True)
class Rejection:
    """A reviewer's signed statement that they would not approve `bundle_id`, and why."""

    site: str
    bundle_id: str
    key_id: str
    issued_at: datetime
    reason: str
    path: Path | None = None

    def to_json(self) -> dict:
        return {"site": self.site, "bundle_id": self.bundle_id, "key_id": self.key_id, "issued_at": iso(self.issued_at),
                "reason": self.reason, "path": str(self.path) if self.path else None}


@dataclass(frozen=True)
class Revocation(Rejection):
    """A signed statement, shaped as a rejection, that takes back every approval of `bundle_id` issued
    until `covers_until`."""

    @property
    def covers_until(self) -> datetime:
        """Approvals of bundle_id issued at or before this no longer count: the revocation's time
        plus the clock skew a site accepts, so an approval from a fast clock cannot outlive it."""
        moment, last = self.issued_at.astimezone(timezone.utc), datetime.max.replace(tzinfo=timezone.utc)
        return last if moment > last - CLOCK_SKEW else moment + CLOCK_SKEW

    def to_json(self) -> dict:
        return {**super().to_json(), "covers_until": iso(self.covers_until)}


def verify_approval(approval: dict | Path, site: Site, bundle_id: str, requested: set[str] | None = None,
                    now: datetime | None = None) -> Approval:
    """Check an approval (a file, or its parsed content) for `bundle_id` at `site`.

    Checks its shape (no duplicate JSON keys, every field of the right type), trusted key,
    signature, site, bundle id, lifetime (expiry after issue, within the site's policy),
    revocations, released datasets (in the catalog; a subset of `requested` when given) and
    expiry at `now`. Raises ApprovalRejected with a one-line reason, for any defect.
    """
    path = approval if isinstance(approval, Path) else None
    where = f"approval {path.name}" if path else "approval"
    statement, signature = (_read_signed(path, where, FORMAT, _APPROVAL_FIELDS) if path
                            else _parse_signed(approval, where, FORMAT, _APPROVAL_FIELDS))
    return _check_approval(statement, signature, path, site, bundle_id, requested, now,
                           site.trusted_keys(), latest_revocation(site, bundle_id))


def find_approval(site: Site, bundle_id: str, requested: set[str] | None = None,
                  now: datetime | None = None) -> tuple[Approval | None, list[str]]:
    """The first valid approval of `bundle_id` in the site's approvals/, and why others were
    rejected: first the approvals of this bundle id, then files that are no approval at all.
    Approvals of other bundle ids are no reason. Never raises for a malformed file."""
    reasons, malformed = [], []
    keys, revoked = site.trusted_keys(), latest_revocation(site, bundle_id)
    for file in sorted(site.approvals_dir.glob("*.json")):
        where = f"approval {file.name}"
        try:
            statement, signature = _read_signed(file, where, FORMAT, _APPROVAL_FIELDS)
        except ApprovalRejected as e:
            malformed.append(str(e))
            continue
        if statement["bundle_id"] != bundle_id:
            continue
        try:
            return _check_approval(statement, signature, file, site, bundle_id, requested, now, keys, revoked), reasons + malformed
        except ApprovalRejected as e:
            reasons.append(str(e))
    return None, reasons + malformed


def latest_revocation(site: Site, bundle_id: str) -> Revocation | None:
    """The latest revocation of `bundle_id` for `site` (see `latest_revocations`), or None."""
    return latest_revocations(site, {bundle_id}).get(bundle_id)


def latest_revocations(site: Site, bundle_ids: Collection[str]) -> dict[str, Revocation]:
    """Bundle id -> the latest well-formed revocation of it for `site` in its revocations/ (read
    once), for each of `bundle_ids` that has one, whoever signed it: a revocation only takes
    authority away and only the site's admin puts it there, so one whose signer the site no longer
    trusts (a reviewer who left) still counts; that, or a signature that does not match, is logged.
    Malformed files and revocations for another site are skipped (and logged), never raised."""
    keys, latest = site.trusted_keys(), {}
    for file in sorted(site.revocations_dir.glob("*.json")):
        where = f"revocation {file.name}"
        try:
            statement, signature = _read_signed(file, where, REVOCATION_FORMAT, _REVOCATION_FIELDS)
            if statement["site"] != site.name:
                raise ApprovalRejected(f"{where} is for site {statement['site']!r}, not {site.name!r}")
        except ApprovalRejected as e:
            log.warning("site %s skips %s", site.name, e)
            continue
        bundle_id = statement["bundle_id"]
        if bundle_id in bundle_ids:
            try:
                _check_signature(statement, signature, keys, site, where)
            except ApprovalRejected as e:
                log.warning("site %s counts %s all the same: %s", site.name, where, e)
            revocation = revocation_from(statement, file)
            if bundle_id not in latest or revocation.issued_at > latest[bundle_id].issued_at:
                latest[bundle_id] = revocation
    return latest


def approval_times(site: Site, bundle_id: str) -> list[datetime]:
    """When each approval of `bundle_id` at `site` says it was issued (see `approvals_issued`)."""
    return approvals_issued(site, {bundle_id}).get(bundle_id, [])


def approvals_issued(site: Site, bundle_ids: Collection[str]) -> dict[str, list[datetime]]:
    """Bundle id -> when each approval of it at `site` in its approvals/ (read once) that a trusted
    key signed says it was issued (UTC), for each of `bundle_ids` that has one; malformed and
    untrusted files are left out."""
    keys, times = site.trusted_keys(), {}
    for file in sorted(site.approvals_dir.glob("*.json")):
        try:
            statement, signature = _read_signed(file, f"approval {file.name}", FORMAT, _APPROVAL_FIELDS)
            _check_signature(statement, signature, keys, site, file.name)
        except ApprovalRejected:
            continue
        if statement["site"] == site.name and statement["bundle_id"] in bundle_ids:
            times.setdefault(statement["bundle_id"], []).append(_time(statement["issued_at"]).astimezone(timezone.utc))
    return times


def _check_approval(statement: dict, signature: bytes, path: Path | None, site: Site, bundle_id: str,
                    requested: set[str] | None, now: datetime | None, keys: dict[str, Ed25519PublicKey],
                    revoked: Revocation | None) -> Approval:
    where = f"approval {path.name}" if path else "approval"
    _check_signature(statement, signature, keys, site, where)
    if statement["site"] != site.name:
        raise ApprovalRejected(f"{where} is for site {statement['site']!r}, not {site.name!r}")
    if statement["bundle_id"] != bundle_id:
        raise ApprovalRejected(f"{where} approves bundle {statement['bundle_id']}, not {bundle_id}")
    issued, expires = _time(statement["issued_at"]), _time(statement["expires_at"])
    if expires <= issued:
        raise ApprovalRejected(f"{where} expires ({iso(expires)}) before it is issued ({iso(issued)}); ask a reviewer to approve the bundle again")
    if expires - issued > timedelta(days=site.max_approval_days):
        raise ApprovalRejected(f"{where} is valid for {(expires - issued) / timedelta(days=1):g} days, longer than site "
                               f"{site.name}'s policy allows ({site.max_approval_days:g} days); ask a reviewer to approve it again")
    if revoked is not None and issued <= revoked.covers_until:
        raise ApprovalRejected(f"{where} was revoked by revocation {revoked.path.name if revoked.path else ''} "
                               f"at {iso(revoked.issued_at)}; ask a reviewer to approve the bundle again")
    datasets = statement["datasets"]
    try:
        catalog = site.catalog
    except CaiaError:
        raise ApprovalRejected(f"site {site.name}'s catalog is unreadable; the site admin checks its catalog.json") from None
    unknown = sorted(set(datasets.values()) - set(catalog))
    if unknown:
        raise ApprovalRejected(f"{where} releases {', '.join(unknown)}, not in site {site.name}'s catalog")
    if requested is not None and set(datasets) - requested:
        extra = ", ".join(sorted(set(datasets) - requested))
        raise ApprovalRejected(f"{where} releases {extra}, which the bundle does not request")
    now = now or datetime.now(timezone.utc)
    if expires <= now:
        raise ApprovalRejected(f"{where} expired at {iso(expires)}; ask a reviewer to approve the bundle again")
    if issued > now + CLOCK_SKEW:
        raise ApprovalRejected(f"{where} is issued in the future ({iso(issued)}); check the clocks")
    return approval_from(statement, path)


def _check_signature(statement: dict, signature: bytes, keys: dict[str, Ed25519PublicKey], site: Site, where: str) -> None:
    key = keys.get(statement["key_id"])
    if key is None:
        raise ApprovalRejected(f"{where} is signed by key {statement['key_id']}, which site {site.name} does not trust")
    try:
        key.verify(signature, canonical(statement))
    except InvalidSignature:
        raise ApprovalRejected(f"{where} has a signature that does not match its content (altered after signing)") from None


def _read_signed(path: Path, where: str, fmt: str, fields: dict[str, str]) -> tuple[dict, bytes]:
    """Read and check a signed statement file; ApprovalRejected(one line, no site path) otherwise."""
    try:
        if not path.is_file():
            raise ApprovalRejected(f"{where} is missing or not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ApprovalRejected(f"{where} is unreadable ({e.strerror or type(e).__name__}); check its permissions") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ApprovalRejected(f"{where} is larger than {MAX_FILE_BYTES} bytes; it is no caia statement, remove it")
    try:
        content = loads_strict(raw)
    except UnicodeDecodeError:
        raise ApprovalRejected(f"{where} is malformed (not UTF-8); ask the reviewer to sign it again") from None
    except RecursionError:
        raise ApprovalRejected(f"{where} is malformed (nested too deeply); ask the reviewer to sign it again") from None
    except ValueError as e:
        raise ApprovalRejected(f"{where} is malformed ({_first_line(e)}); ask the reviewer to sign it again") from None
    return _parse_signed(content, where, fmt, fields)


def _parse_signed(content, where: str, fmt: str, fields: dict[str, str]) -> tuple[dict, bytes]:
    """Check the shape of a signed statement: every field present (optional ones may be absent), of
    its kind, and nothing else."""

    def malformed(why: str):
        return ApprovalRejected(f"{where} is malformed ({why}); ask the reviewer to sign it again")

    if not isinstance(content, dict) or set(content) != {"statement", "signature"}:
        raise malformed("not an object with exactly 'statement' and 'signature'")
    statement, signature = content["statement"], content["signature"]
    if not isinstance(statement, dict):
        raise malformed("statement is not an object")
    missing, extra = sorted(set(fields) - _OPTIONAL_FIELDS - set(statement)), sorted(set(statement) - set(fields))
    if missing or extra:
        raise malformed(f"statement lacks {', '.join(missing)}" if missing else f"statement has unknown fields {', '.join(extra)[:100]}")
    for name, kind in fields.items():
        if name not in statement:
            continue
        value = statement[name]
        if kind == "epsilon":
            if not valid_epsilon(value):
                raise malformed(f"{name} is not a finite number above 0")
        elif kind == "releases":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise malformed(f"{name} is not an object of dataset names to catalog ids")
        elif not isinstance(value, str):
            raise malformed(f"{name} is not a string")
        elif kind == "time" and _time(value) is None:
            raise malformed(f"{name} is not an ISO 8601 time with a timezone")
        elif kind == "key id" and not _KEY_ID.fullmatch(value):
            raise malformed(f"{name} is not 16 hex digits")
        elif kind == "bundle id" and not BUNDLE_ID.fullmatch(value):
            raise malformed(f"{name} is not sha256:<64 hex digits>")
    if statement["format"] != fmt:
        raise malformed(f"format is not {fmt}")
    try:
        canonical(statement)
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") cannot have been signed
        raise malformed("statement holds text that is not valid Unicode") from None
    try:
        raw_signature = base64.b64decode(signature, validate=True) if isinstance(signature, str) else None
    except ValueError:  # binascii.Error, or a signature that is not ASCII
        raw_signature = None
    if raw_signature is None or len(raw_signature) != 64:
        raise malformed("signature is not a base64 Ed25519 signature")
    return statement, raw_signature


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def approval_from(statement: dict, path: Path | None) -> Approval:
    """The Approval a well-formed, signed statement makes (checked or just signed)."""
    return Approval(statement["site"], statement["bundle_id"], dict(statement["datasets"]), statement["key_id"],
                    _time(statement["issued_at"]), _time(statement["expires_at"]), path, statement.get("max_epsilon"))


def revocation_from(statement: dict, path: Path | None) -> Revocation:
    """The Revocation a well-formed, signed statement makes (checked or just signed)."""
    return Revocation(statement["site"], statement["bundle_id"], statement["key_id"], _time(statement["issued_at"]),
                      statement["reason"], path)


def rejection_from(statement: dict, path: Path | None) -> Rejection:
    """The Rejection a well-formed, signed statement makes (checked or just signed)."""
    return Rejection(statement["site"], statement["bundle_id"], statement["key_id"], _time(statement["issued_at"]),
                     statement["reason"], path)


def read_rejection(path: Path, site: Site) -> Rejection:
    """The rejection in file `path`, signed by one of `site`'s trusted keys. Raises ApprovalRejected
    (one line naming the file) for a malformed, unsigned or untrusted one."""
    where = f"rejection {path.name}"
    statement, signature = _read_signed(path, where, REJECTION_FORMAT, _REJECTION_FIELDS)
    _check_signature(statement, signature, site.trusted_keys(), site, where)
    return rejection_from(statement, path)


def rejections(site: Site, bundle_id: str) -> list[Rejection]:
    """The rejections of `bundle_id` in the site's rejections/ that its trusted keys signed, oldest
    first; malformed, untrusted and other bundles' files are skipped (and logged), never raised."""
    found = []
    for file in sorted(site.rejections_dir.glob("*.json")):
        try:
            rejection = read_rejection(file, site)
        except ApprovalRejected as e:
            log.warning("site %s skips %s", site.name, e)
            continue
        if rejection.bundle_id == bundle_id and rejection.site == site.name:
            found.append(rejection)
    return sorted(found, key=lambda r: r.issued_at)


def iso(moment: datetime) -> str:
    """`moment` in UTC as statements write times: 2026-01-31T12:00:00Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str) -> datetime | None:
    """An ISO 8601 time with a timezone, or None."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None or moment.utcoffset() is None:
            return None
        moment.astimezone(timezone.utc)  # year 1 at +01:00 has no UTC time
        return moment
    except (ValueError, OverflowError):
        return None
