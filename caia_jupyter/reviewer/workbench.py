"""The reviewer's workbench behind JupyterLab's Review view: read a bundle, show it, sign for one site.

A bundle arrives as a `.zip` made by `caia pack` or as a bundle folder; either way it is copied
into a fresh temporary directory through `transport.unpack` (the folder is packed first, which
refuses links), so what is shown and what is signed come from one checked copy that nobody else
writes, and nothing is extracted beside the file. The copy is removed when the work is done.

The reviewer's private key and the site directory are the server's configuration; nothing here
returns the key or its path: an error naming it says "the configured reviewer key" instead.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..contracts.errors import BundleError, CaiaError
from ..contracts.fileset import MANIFEST
from ..researcher.bundle import Bundle
from ..researcher.transport import pack, unpack
from ..site.keys import key_id, load_private_key
from ..site.sites import Site, open_site
from . import signing
from .review import rendered

HIDDEN_KEY = "the configured reviewer key"


@dataclass(frozen=True)
class Signer:
    """Who signs at this server: the site (None if none is configured or it is unusable), the key
    file (None likewise), the key id, and `reason`, one line, when signing is not possible."""

    site: Site | None
    key_file: Path | None
    key_id: str | None
    reason: str

    @property
    def can_sign(self) -> bool:
        return not self.reason


def signer(site_dir: str, key_file: str, root: Path, how: str) -> Signer:
    """The signer configured as `site_dir` and `key_file` (either may be ""), for a server whose
    root is `root`: a key inside the root is refused, since the server's file API would hand it to
    any browser. `how` is one line telling how to configure both. Never raises."""
    site, reason = None, ""
    if site_dir:
        try:
            site = open_site(Path(site_dir).expanduser())
        except CaiaError as e:
            reason = f"the review site cannot be opened: {e}"
    if not site_dir or not key_file:
        return Signer(site, None, None, reason or f"this server signs for no site; {how}")
    key = Path(key_file).expanduser().resolve()
    if key.is_relative_to(root):
        return Signer(site, None, None, "the configured reviewer key lies inside the server's root directory, where "
                                        "the browser could read it; keep it outside the root and restart the server")
    if site is None:
        return Signer(None, None, None, reason)
    try:
        kid = key_id(signing.signing_key(site, key).public_key())
    except CaiaError as e:
        return Signer(site, None, _public_id(key), hidden(str(e), key, key_file))
    return Signer(site, key, kid, "")


@contextmanager
def opened(path: Path, shown: str | None = None) -> Iterator[Bundle]:
    """A checked copy of the bundle at `path` (a packed `.zip` or a bundle folder) in a temporary
    directory, removed on leaving; errors name it as `shown` (default: its file name). Raises
    BundleError (one line) for a path that does not exist, anything else, or a bundle `unpack`
    refuses (not intact, a link, a special file, a zip bomb)."""
    path = Path(path)
    shown = shown or path.name
    with tempfile.TemporaryDirectory(prefix="caia-review-") as work:
        work = Path(work)
        if not path.exists():
            raise BundleError(f"{shown} does not exist; open a bundle folder that `caia bundle` made, or a .zip from "
                              "`caia pack`")
        if path.is_dir():
            if not (path / MANIFEST).is_file():
                raise BundleError(f"{shown} is no bundle folder (it has no {MANIFEST}); open a folder that "
                                  "`caia bundle` made, or a .zip from `caia pack`")
            archive = pack(path, work / "bundle.zip")
        elif path.suffix.lower() == ".zip" and path.is_file():
            archive = path
        else:
            raise BundleError(f"{shown} is neither a bundle folder nor a .zip from `caia pack`; open the folder that "
                              "holds it")
        yield unpack(archive, work / "bundle")


def view(path: Path, who: Signer, shown: str | None = None) -> dict:
    """What the Review view shows of the bundle at `path` (named `shown` in errors): {"bundle_id",
    "short_id", "review_html" (the review page, rendered for the site when one is configured),
    "capabilities" (`capabilities.report`), "changes" (`changes.compare` against the site's store,
    or null), "standing" (`signing.standing` at the site, or null), "site" (name or null),
    "requested" (dataset names the bundle asks for), "catalog" (the site's dataset ids), "key_id",
    "can_sign" (false for a bundle that did not pass validation too), "reason" (why not, or "")}.
    Raises BundleError as `opened` does."""
    with opened(path, shown) as bundle:
        review = rendered(bundle.path, bundle.path.parent / "review.html", site=who.site)
        reason = who.reason or signing.validation_problem(bundle)
        return {
            "bundle_id": bundle.id, "short_id": bundle.short_id, "review_html": review.path.read_text(encoding="utf-8"),
            "capabilities": review.capabilities.to_json(),
            "changes": review.changes.to_json() if review.changes is not None else None,
            "standing": signing.standing(who.site, bundle.id) if who.site else None,
            "site": who.site.name if who.site else None, "requested": sorted(bundle.manifest["datasets"]),
            "catalog": sorted(who.site.catalog) if who.site else [], "key_id": who.key_id,
            "can_sign": not reason, "reason": reason,
        }


def approve(path: Path, bundle_id: str, datasets: dict[str, str], who: Signer,
            expires_in_days: float | None = None) -> dict:
    """Sign an approval of the bundle at `path` for the configured site, releasing `datasets`
    (requested name -> catalog id); returns the approval's to_json(). Raises CaiaError when this
    server cannot sign, BundleError when the bundle there is no longer `bundle_id`, and what
    `signing.approve` raises (a release the site would not admit, a bad lifetime)."""
    with _signable(path, bundle_id, who) as bundle:
        try:
            approval = signing.approve(who.site, bundle_id, datasets, who.key_file, expires_in_days, bundle=bundle)
        except CaiaError as e:
            raise type(e)(hidden(str(e), who.key_file)) from None
        return approval.to_json()


def reject(path: Path, bundle_id: str, reason: str, who: Signer) -> dict:
    """Sign and record a rejection of the bundle at `path` with `reason`; returns its json. Raises as
    `approve` does."""
    with _signable(path, bundle_id, who):
        try:
            rejection = signing.reject(who.site, bundle_id, who.key_file, reason)
        except CaiaError as e:
            raise type(e)(hidden(str(e), who.key_file)) from None
        return rejection.to_json()


def hidden(message: str, key: Path | None, *spellings: str) -> str:
    """`message` with every spelling of the key's path replaced by HIDDEN_KEY."""
    for spelling in sorted({str(key) if key else "", *spellings} - {""}, key=len, reverse=True):
        message = message.replace(spelling, HIDDEN_KEY)
    return message


@contextmanager
def _signable(path: Path, bundle_id: str, who: Signer) -> Iterator[Bundle]:
    if not who.can_sign:
        raise CaiaError(f"cannot sign: {who.reason}")
    with opened(path) as bundle:
        if bundle.id != bundle_id:
            raise BundleError(f"{path.name} is now bundle {bundle.short_id}, not the {bundle_id[7:19]} you reviewed; "
                              "reload the review and read it again")
        yield bundle


def _public_id(key: Path) -> str | None:
    try:
        return key_id(load_private_key(key).public_key())
    except (CaiaError, OSError, ValueError):
        return None

