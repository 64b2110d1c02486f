"""Signed approvals and revocations: a site's reviewer releases datasets to one exact bundle id,
and can take that back.

An approval file holds a statement and its Ed25519 signature over the statement's canonical
JSON:

    {"statement": {"format": "caia-approval/1", "site", "bundle_id", "datasets": {name: catalog id},
                   "key_id", "issued_at", "expires_at"},
     "signature": base64}

A revocation file (in the site's revocations/) has the same shape, with the statement
{"format": "caia-revocation/1", "site", "bundle_id", "key_id", "issued_at", "reason"}: every
approval of that bundle id at that site issued at or before it no longer counts.

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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..contracts.errors import ApprovalRejected, CaiaError, SiteError
from ..contracts.fsutil import loads_strict, write_json
from ..contracts.manifest import canonical
from .keys import key_id, load_private_key, public_key_file
from .sites import Site, valid_days

FORMAT = "caia-approval/1"
REVOCATION_FORMAT = "caia-revocation/1"
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_EXPIRES_IN_DAYS = 30
MAX_FILE_BYTES = 64 * 1024  # an approval is well under 1 KiB
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_BUNDLE_ID = re.compile(r"sha256:[0-9a-f]{64}")
# The fields of each kind of signed statement, and the kind of value each holds.
_APPROVAL_FIELDS = {"format": "text", "site": "text", "bundle_id": "bundle id", "datasets": "releases",
                    "key_id": "key id", "issued_at": "time", "expires_at": "time"}
_REVOCATION_FIELDS = {"format": "text", "site": "text", "bundle_id": "bundle id", "key_id": "key id",
                      "issued_at": "time", "reason": "text"}
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

    def to_json(self) -> dict:
        return {"site": self.site, "bundle_id": self.bundle_id, "datasets": self.datasets, "key_id": self.key_id,
                "issued_at": _iso(self.issued_at), "expires_at": _iso(self.expires_at),
                "path": str(self.path) if self.path else None}


@dataclass(frozen=True)
class Revocation:
    site: str
    bundle_id: str
    key_id: str
    issued_at: datetime  # approvals of bundle_id issued at or before this no longer count
    reason: str
    path: Path | None = None

    def to_json(self) -> dict:
        return {"site": self.site, "bundle_id": self.bundle_id, "key_id": self.key_id, "issued_at": _iso(self.issued_at),
                "reason": self.reason, "path": str(self.path) if self.path else None}


def approve(site: Site, bundle_id: str, datasets: dict[str, str], key_file: str | Path,
            expires_in_days: float | None = None, output: Path | None = None, now: datetime | None = None) -> Approval:
    """Sign an approval with the reviewer key in `key_file` and store it in the site's approvals
    (or at `output`).

    `expires_in_days` (default: 30, or the site's policy if shorter) must be a finite positive
    number within the site's `max_approval_days`. Raises CaiaError for a bad lifetime, SiteError
    for a key that lies inside the site directory or that the site does not trust. An approval
    is issued after any revocation of the same bundle, so revoking and approving again (with
    fewer datasets, say) works even within one second.
    """
    if expires_in_days is None:
        expires_in_days = min(DEFAULT_EXPIRES_IN_DAYS, site.max_approval_days)
    if not valid_days(expires_in_days) or expires_in_days > site.max_approval_days:
        raise CaiaError(f"--expires-in {expires_in_days} must be a finite number of days above 0 and at most "
                        f"{site.max_approval_days:g} (site {site.name}'s policy)")
    private = signing_key(site, key_file)
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    revoked = latest_revocation(site, bundle_id)
    if revoked is not None and revoked.issued_at >= issued:
        issued = revoked.issued_at + timedelta(seconds=1)
    statement = {
        "format": FORMAT,
        "site": site.name,
        "bundle_id": bundle_id,
        "datasets": dict(sorted(datasets.items())),
        "key_id": key_id(private.public_key()),
        "issued_at": _iso(issued),
        "expires_at": _iso(issued + timedelta(days=expires_in_days)),
    }
    path = output or site.approvals_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}.json"
    write_json(path, _signed(statement, private))
    return _approval(statement, path)


def revoke(site: Site, bundle_id: str, key_file: str | Path, reason: str = "", output: Path | None = None,
           now: datetime | None = None) -> Revocation:
    """Sign a revocation of every approval of `bundle_id` at `site` issued until now, and store it
    in the site's revocations/ (or at `output`). Raises CaiaError for a malformed bundle id,
    SiteError for a key that lies inside the site directory or that the site does not trust.
    """
    if not isinstance(bundle_id, str) or not _BUNDLE_ID.fullmatch(bundle_id):
        raise CaiaError(f"{bundle_id!r} is not a bundle id; give it as `caia bundle` prints it: sha256:<64 hex digits>")
    private = signing_key(site, key_file)
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    statement = {"format": REVOCATION_FORMAT, "site": site.name, "bundle_id": bundle_id,
                 "key_id": key_id(private.public_key()), "issued_at": _iso(issued), "reason": reason}
    stamp = issued.strftime("%Y%m%dT%H%M%SZ")
    path = output or site.revocations_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}-{stamp}.json"
    write_json(path, _signed(statement, private))
    return _revocation(statement, path)


def signing_key(site: Site, key_file: str | Path) -> Ed25519PrivateKey:
    """The reviewer's private key in `key_file`, if it may sign for `site`.

    Raises SiteError if the file lies inside the site directory (code approved at the site could
    read it), is not an Ed25519 private key, or its public key is not one the site trusts.
    """
    key_file = Path(key_file)
    if key_file.resolve().is_relative_to(site.path):
        raise SiteError(f"the private key {key_file} lies inside site directory {site.path}, where approved code could "
                        f"read it; make a reviewer key on your own machine (`caia reviewer init`) and have the site trust it")
    private = load_private_key(key_file)
    kid = key_id(private.public_key())
    if kid not in site.trusted_keys():
        raise SiteError(f"site {site.name} does not trust reviewer key {kid} ({key_file}); the site admin adds it with "
                        f"`caia site trust {site.path} {public_key_file(key_file)}`")
    return private


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
    """The latest valid revocation of `bundle_id` at `site`: signed by a key the site trusts, for
    this site. Malformed or untrusted revocation files are skipped (and logged), never raised."""
    keys, latest = site.trusted_keys(), None
    for file in sorted(site.revocations_dir.glob("*.json")):
        where = f"revocation {file.name}"
        try:
            statement, signature = _read_signed(file, where, REVOCATION_FORMAT, _REVOCATION_FIELDS)
            _check_signature(statement, signature, keys, site, where)
            if statement["site"] != site.name:
                raise ApprovalRejected(f"{where} is for site {statement['site']!r}, not {site.name!r}")
        except ApprovalRejected as e:
            log.warning("site %s skips %s", site.name, e)
            continue
        if statement["bundle_id"] == bundle_id:
            revocation = _revocation(statement, file)
            if latest is None or revocation.issued_at > latest.issued_at:
                latest = revocation
    return latest


def parse_releases(values: list[str]) -> dict[str, str]:
    """`--dataset NAME` or `--dataset NAME=CATALOG_ID` -> {requested name: catalog id}."""
    releases = {}
    for value in values:
        name, _, catalog_id = value.partition("=")
        releases[name] = catalog_id or name
    return releases


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
        raise ApprovalRejected(f"{where} expires ({_iso(expires)}) before it is issued ({_iso(issued)}); ask a reviewer to approve the bundle again")
    if expires - issued > timedelta(days=site.max_approval_days):
        raise ApprovalRejected(f"{where} is valid for {(expires - issued) / timedelta(days=1):g} days, longer than site "
                               f"{site.name}'s policy allows ({site.max_approval_days:g} days); ask a reviewer to approve it again")
    if revoked is not None and issued <= revoked.issued_at:
        raise ApprovalRejected(f"{where} was revoked by revocation {revoked.path.name if revoked.path else ''} "
                               f"at {_iso(revoked.issued_at)}; ask a reviewer to approve the bundle again")
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
        raise ApprovalRejected(f"{where} expired at {_iso(expires)}; ask a reviewer to approve the bundle again")
    if issued > now + CLOCK_SKEW:
        raise ApprovalRejected(f"{where} is issued in the future ({_iso(issued)}); check the clocks")
    return _approval(statement, path)


def _check_signature(statement: dict, signature: bytes, keys: dict[str, Ed25519PublicKey], site: Site, where: str) -> None:
    key = keys.get(statement["key_id"])
    if key is None:
        raise ApprovalRejected(f"{where} is signed by key {statement['key_id']}, which site {site.name} does not trust")
    try:
        key.verify(signature, canonical(statement))
    except InvalidSignature:
        raise ApprovalRejected(f"{where} has a signature that does not match its content (altered after signing)") from None


def _signed(statement: dict, private: Ed25519PrivateKey) -> dict:
    return {"statement": statement, "signature": base64.b64encode(private.sign(canonical(statement))).decode()}


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
    """Check the shape of a signed statement: every field present, of its kind, and nothing else."""

    def malformed(why: str):
        return ApprovalRejected(f"{where} is malformed ({why}); ask the reviewer to sign it again")

    if not isinstance(content, dict) or set(content) != {"statement", "signature"}:
        raise malformed("not an object with exactly 'statement' and 'signature'")
    statement, signature = content["statement"], content["signature"]
    if not isinstance(statement, dict):
        raise malformed("statement is not an object")
    if set(statement) != set(fields):
        missing, extra = sorted(set(fields) - set(statement)), sorted(set(statement) - set(fields))
        raise malformed(f"statement lacks {', '.join(missing)}" if missing else f"statement has unknown fields {', '.join(extra)[:100]}")
    for name, kind in fields.items():
        value = statement[name]
        if kind == "releases":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise malformed(f"{name} is not an object of dataset names to catalog ids")
        elif not isinstance(value, str):
            raise malformed(f"{name} is not a string")
        elif kind == "time" and _time(value) is None:
            raise malformed(f"{name} is not an ISO 8601 time with a timezone")
        elif kind == "key id" and not _KEY_ID.fullmatch(value):
            raise malformed(f"{name} is not 16 hex digits")
        elif kind == "bundle id" and not _BUNDLE_ID.fullmatch(value):
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


def _approval(statement: dict, path: Path | None) -> Approval:
    return Approval(statement["site"], statement["bundle_id"], dict(statement["datasets"]), statement["key_id"],
                    _time(statement["issued_at"]), _time(statement["expires_at"]), path)


def _revocation(statement: dict, path: Path | None) -> Revocation:
    return Revocation(statement["site"], statement["bundle_id"], statement["key_id"], _time(statement["issued_at"]),
                      statement["reason"], path)


def _iso(moment: datetime) -> str:
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
