"""Signing approvals, revocations and rejections, on a reviewer's own machine, with the reviewer's private key.

A reviewer of a site signs an approval of one bundle id, releasing datasets of the site's catalog
to it for a limited time, a revocation of every approval of a bundle id issued until now
(and within the clock skew a site allows after it), or a rejection of a bundle with a reason.
Each one written into the site directory is also recorded in the site's audit log
(`caia_jupyter.site.audit`); if that record cannot be written, the statement is removed again. The
statements and how a site checks them are `caia_jupyter.site.approvals`; the key pair is made by
`keypair.create_key_pair` and never lies in a site directory.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..contracts.errors import CaiaError, SiteError, ValidationFailed
from ..contracts.fsutil import write_atomic, write_json
from ..contracts.manifest import BUNDLE_ID, canonical
from ..researcher.validation import require_passed
from ..site import audit
from ..site.approvals import (CLOCK_SKEW, FORMAT, REJECTION_FORMAT, REVOCATION_FORMAT, Approval, Rejection, Revocation,
                              approval_from, approval_times, find_approval, iso, latest_revocation, rejection_from,
                              rejections, revocation_from)
from ..site.guard import Unfit, admissible, standards_of
from ..site.keys import key_id, load_private_key
from ..site.sites import Site, shown_days, valid_days, valid_epsilon
from .store import keep

if TYPE_CHECKING:
    from ..researcher.bundle import Bundle

DEFAULT_EXPIRES_IN_DAYS = 30
# What a reviewer does about a bundle that has not passed validation: the researcher validates, not the reviewer.
ASK_FOR_VALIDATED = "ask the researcher for the bundle that passed validation (with its records/validation.json)"


def validation_problem(bundle: Bundle) -> str:
    """Why a reviewer may not sign `bundle` for want of a passing validation (one line, telling the
    reviewer what to do), or "" when it passed."""
    try:
        require_passed(bundle, ask=ASK_FOR_VALIDATED)
    except CaiaError as e:
        return str(e)
    return ""


def standing(site: Site, bundle_id: str, now: datetime | None = None) -> dict:
    """Where `bundle_id` stands at `site`, from its approvals/, revocations/ and rejections/ (as the
    site reads them: `find_approval`, `latest_revocation`, `rejections`): {"state": "approved",
    "revoked", "rejected" or "never reviewed" (the first that holds, in that order; an approval that
    expired or does not count is "never reviewed" unless revoked or rejected), "approval" (its json
    or null), "revocation" (json or null), "rejections" (json of each, oldest first), "line" (one
    line of text)}."""
    approval, _ = find_approval(site, bundle_id, now=now)
    revocation, rejected = latest_revocation(site, bundle_id), rejections(site, bundle_id)
    if approval is not None:
        state, line = "approved", f"approved by key {approval.key_id} until {iso(approval.expires_at)}"
    elif revocation is not None:
        state, line = "revoked", f"revoked at {iso(revocation.issued_at)} by key {revocation.key_id}"
    elif rejected:
        state, line = "rejected", "not approved"
    else:
        state, line = "never reviewed", "never reviewed: no approval, revocation or rejection of this bundle"
    if rejected:
        line += (f"; rejected before, {len(rejected)} time{'s' * (len(rejected) > 1)}, last at "
                 f"{iso(rejected[-1].issued_at)}: {rejected[-1].reason}")
    return {"state": state, "approval": approval.to_json() if approval else None,
            "revocation": revocation.to_json() if revocation else None,
            "rejections": [r.to_json() for r in rejected], "line": f"standing at {site.name}: {line}"}


def check_admissible(site: Site, bundle: Bundle, releases: dict[str, str], max_epsilon: float | None = None) -> None:
    """Refuse, before anything is signed, a release `site` would not admit: `bundle` must have passed
    validation and pass the very check the site's guard makes at admission (`guard.admissible`):
    the site's privacy policy usable and fit for the bundle's updates, `releases` (requested name ->
    catalog id) fitting the requested schema and, under a site policy that refuses them, no violation
    of the bundle's dataset standards, and its privacy request within `max_epsilon` (the
    approval's ceiling) and the site's policy, its delta below 1/rows. Raises CaiaError in one line
    naming the bundle, the numbers, or the dataset and the column."""
    try:
        paths = [spec["standard"] for spec in bundle.manifest["datasets"].values() if spec.get("standard")]
        admissible(site, bundle.manifest, releases, max_epsilon,
                   standards_of(bundle.manifest, {path: (bundle.path / path).read_bytes() for path in paths}))
    except Unfit as e:
        detail = f" ({e.detail})" if e.detail else ""  # the reviewer works at the site: its details may show
        raise CaiaError(f"site {site.name} would refuse this release: {e}{detail}{'; ' + e.fix if e.fix else ''}; "
                        "nothing was signed") from e
    problem = validation_problem(bundle)
    if problem:
        raise ValidationFailed(problem)


def approve(site: Site, bundle_id: str, datasets: dict[str, str], key_file: str | Path,
            expires_in_days: float | None = None, output: Path | None = None, now: datetime | None = None,
            bundle: Bundle | None = None, max_epsilon: float | None = None) -> Approval:
    """Sign an approval with the reviewer key in `key_file` and store it in the site's approvals
    (or at `output`), with the site's privacy ceiling `max_epsilon` for this bundle when given (a
    finite number above 0; the statement leaves it out otherwise). Given the `bundle` itself (as
    `caia approve` gives it), first refuse what the site would not admit (`check_admissible`), and,
    writing into the site's approvals, keep a copy of it in the site's store (`store.keep`) before the
    approval is written.

    `expires_in_days` (default: 30, or the site's policy if shorter) must be a finite positive
    number within the site's `max_approval_days`. Raises CaiaError for a bad lifetime or ceiling, SiteError
    for a key that lies inside the site directory or that the site does not trust. An approval
    is issued after what any revocation of the same bundle covers (`Revocation.covers_until`), so
    revoking and approving again (with fewer datasets, say) works at once; CaiaError if that
    revocation is dated further ahead of this machine's clock than a site accepts.
    """
    if expires_in_days is None:
        expires_in_days = min(DEFAULT_EXPIRES_IN_DAYS, site.max_approval_days)
    if not valid_days(expires_in_days) or expires_in_days > site.max_approval_days:
        raise CaiaError(f"an expiry of {shown_days(expires_in_days)} days must be a finite number of days above 0 and at "
                        f"most {site.max_approval_days:g} ({site.name}'s policy)")
    if max_epsilon is not None and not valid_epsilon(max_epsilon):
        raise CaiaError(f"an epsilon ceiling of {shown_days(max_epsilon)} must be a finite number above 0 "
                        "(the largest epsilon this site admits for the bundle)")
    private = signing_key(site, key_file)
    if bundle is not None:
        if bundle.id != bundle_id:
            raise CaiaError(f"bundle {bundle.short_id} is not the bundle {bundle_id} to approve")
        check_admissible(site, bundle, datasets, max_epsilon)
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    revoked = latest_revocation(site, bundle_id)
    if revoked is not None and revoked.covers_until >= issued:
        if revoked.issued_at > issued + CLOCK_SKEW:
            name = revoked.path.name if revoked.path else "revocation"
            raise CaiaError(f"revocation {name} of this bundle at site {site.name} is dated {iso(revoked.issued_at)}, more "
                            f"than {CLOCK_SKEW / timedelta(minutes=1):g} minutes ahead of this machine's clock "
                            f"({iso(issued)}); check the clocks, then approve again")
        issued = revoked.covers_until.replace(microsecond=0) + timedelta(seconds=1)
    statement = {
        "format": FORMAT,
        "site": site.name,
        "bundle_id": bundle_id,
        "datasets": dict(sorted(datasets.items())),
        "key_id": key_id(private.public_key()),
        "issued_at": iso(issued),
        "expires_at": iso(issued + timedelta(days=expires_in_days)),
        **({"max_epsilon": max_epsilon} if max_epsilon is not None else {}),
    }
    path = output or site.approvals_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}.json"
    if bundle is not None and output is None:
        keep(site, bundle)  # first: no approval in the site that its store does not hold; later reviews diff against it
    released = ", ".join(f"{k}={v}" for k, v in statement["datasets"].items()) or "no datasets"
    _store(site, path, _signed(statement, private), "approval", f"releases {released} until {statement['expires_at']}")
    return approval_from(statement, path)


def revoke(site: Site, bundle_id: str, key_file: str | Path, reason: str = "", output: Path | None = None,
           now: datetime | None = None) -> Revocation:
    """Sign a revocation of every approval of `bundle_id` at `site` issued until now, and store it
    in the site's revocations/ (or at `output`). It is dated now, or as late as the latest approval
    of that bundle the site holds if that one comes from a clock ahead of this one, so it covers
    that approval too. Raises CaiaError for a malformed bundle id, SiteError for a key that lies
    inside the site directory or that the site does not trust.
    """
    _check_bundle_id(bundle_id)
    private = signing_key(site, key_file)
    issued = max([(now or datetime.now(timezone.utc)).replace(microsecond=0), *approval_times(site, bundle_id)])
    statement = {"format": REVOCATION_FORMAT, "site": site.name, "bundle_id": bundle_id,
                 "key_id": key_id(private.public_key()), "issued_at": iso(issued), "reason": reason}
    stamp = issued.strftime("%Y%m%dT%H%M%SZ")
    path = output or site.revocations_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}-{stamp}.json"
    _store(site, path, _signed(statement, private), "revocation", reason)
    return revocation_from(statement, path)


def reject(site: Site, bundle_id: str, key_file: str | Path, reason: str, output: Path | None = None,
           now: datetime | None = None) -> Rejection:
    """Sign a rejection of `bundle_id` at `site`: the reviewer read it and would not approve it, for
    `reason` (one line, for the site's records and the researcher the reviewer tells). Stored in
    the site's rejections/ (or at `output`) and recorded in its audit log. Raises CaiaError for a
    malformed bundle id or an empty reason, SiteError for a key that lies inside the site directory
    or that the site does not trust.
    """
    _check_bundle_id(bundle_id)
    if not isinstance(reason, str) or not reason.strip():
        raise CaiaError("a rejection needs a reason: what the reviewer would not approve, and why")
    if not reason.strip().isprintable():
        raise CaiaError("a rejection reason is one line of printable text; it holds a line break or control "
                        "character: give it as one line")
    private = signing_key(site, key_file)
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    statement = {"format": REJECTION_FORMAT, "site": site.name, "bundle_id": bundle_id,
                 "key_id": key_id(private.public_key()), "issued_at": iso(issued), "reason": reason.strip()}
    stamp = issued.strftime("%Y%m%dT%H%M%SZ")
    path = output or site.rejections_dir / f"{bundle_id.removeprefix('sha256:')[:16]}-{statement['key_id']}-{stamp}.json"
    _store(site, path, _signed(statement, private), "rejection", statement["reason"])
    return rejection_from(statement, path)


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
        raise SiteError(f"site {site.name} does not trust reviewer key {kid} ({key_file}); use your own key, whose "
                        "public half the site's admin trusted after checking with you (`caia site trust`)")
    return private


def parse_releases(values: list[str]) -> dict[str, str]:
    """`--dataset NAME` or `--dataset NAME=CATALOG_ID` -> {requested name: catalog id}."""
    releases = {}
    for value in values:
        name, _, catalog_id = value.partition("=")
        releases[name] = catalog_id or name
    return releases


def _check_bundle_id(bundle_id) -> None:
    if not isinstance(bundle_id, str) or not BUNDLE_ID.fullmatch(bundle_id):
        raise CaiaError(f"{bundle_id!r} is not a bundle id; give it as `caia bundle` prints it: sha256:<64 hex digits>")


def _store(site: Site, path: Path, signed: dict, event: str, reason: str) -> None:
    """Write a signed statement to `path`; when that lies in the site directory, record it in the
    site's audit log too, or, whatever stops the record, remove it again (putting back a statement of
    the same name it replaced) and raise SiteError, or the error that stopped the record: nothing
    reaches the site unrecorded."""
    path = Path(path)
    earlier = _plain_file_bytes(path)  # a statement of the same name (same bundle, key and second): kept if this fails
    write_json(path, signed)
    if not path.resolve().is_relative_to(site.path):
        return  # written elsewhere, to be carried to the site: not yet the site's
    statement = signed["statement"]
    try:
        audit.record(site, event, statement["bundle_id"], statement["key_id"], "signed", reason)
    except BaseException as e:  # whatever stops the record, this statement goes too
        if earlier is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, earlier)
        if isinstance(e, SiteError):
            raise SiteError(f"{e}; the {event} was not stored") from e
        raise


def _plain_file_bytes(path: Path) -> bytes | None:
    """The bytes of the plain file at `path` (never through a link), or None."""
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _signed(statement: dict, private: Ed25519PrivateKey) -> dict:
    return {"statement": statement, "signature": base64.b64encode(private.sign(canonical(statement))).decode()}
