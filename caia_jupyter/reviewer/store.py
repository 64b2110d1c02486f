"""A site's store of the bundles it approved, content-addressed by bundle id.

`<site>/approved/<64 hex>/` holds a copy of one approved bundle: its manifest.json and the files it
lists (no records/), so the review of a later bundle can say what changed since the site approved
this one (`changes.compare`), whatever became of the researcher's bundle folder. `signing.approve`
keeps every bundle it approves into the site.

The store lies in the site directory, so its entries are untrusted when read: an entry counts only
if it is an intact bundle whose id is its folder's name; any other is skipped and logged.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from ..contracts.errors import BundleError, SiteError
from ..contracts.fileset import RECORDS
from ..contracts.fsutil import staged_dir
from ..researcher.bundle import Bundle, require_intact
from ..site.sites import Site

STORE = "approved"
_ENTRY = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger(__name__)


def folder(site: Site) -> Path:
    """The store of `site`: `<site>/approved/`."""
    return site.path / STORE


def keep(site: Site, bundle: Bundle) -> Path:
    """Copy `bundle` (manifest.json and the files it lists, never records/) into the store of `site`
    as `approved/<64 hex of its id>/` and return that folder. Idempotent: an intact entry of that id
    is left as it is; any other folder of that name is replaced. The copy is staged beside the
    entry and renamed into place, and checked against `bundle.id` first: links are copied as links,
    which the check refuses, so nothing is ever read or written through one.

    Raises SiteError (one line naming it and the fix) when the store folder is a symbolic link or
    not a folder, the entry is a symbolic link (dangling or not), or the entry cannot be written
    or replaced; BundleError when the bundle folder no longer holds `bundle.id` (nothing is kept then)."""
    store = folder(site)
    if store.is_symlink() or (store.exists() and not store.is_dir()):
        what = "a symbolic link" if store.is_symlink() else "not a folder"
        raise SiteError(f"{store} is {what}; caia keeps the site's approved bundles there, so make it a plain folder "
                        "(move it away first)")
    target = store / bundle.id.removeprefix("sha256:")
    if target.is_symlink():  # never replaced, followed or written through
        raise SiteError(f"store entry {target} is a symbolic link; caia keeps a copy of the approved bundle there, so "
                        "remove the link (keep what it points to as evidence if you did not make it)")
    if target.is_dir():
        try:
            require_intact(target, bundle.id)
            return target
        except BundleError:
            pass  # a damaged entry: replaced below
    try:
        with staged_dir(target) as stage:
            shutil.copytree(bundle.path, stage, ignore=shutil.ignore_patterns(RECORDS), symlinks=True, dirs_exist_ok=True)
            try:
                require_intact(stage, bundle.id)
            except BundleError as e:
                raise BundleError(f"bundle {bundle.path} no longer holds {bundle.short_id}, so site {site.name} cannot keep "
                                  f"it ({str(e).partition(': ')[2]}); run `caia verify {bundle.path}`") from e
    except OSError as e:  # a store entry or folder planted or damaged so that it cannot be replaced
        raise SiteError(f"site {site.name} cannot keep bundle {bundle.short_id} as store entry {target} "
                        f"({e.strerror or type(e).__name__}); move that entry away and approve again") from None
    return target


def approved_bundles(site: Site) -> list[Bundle]:
    """Every bundle in the store of `site` that is intact and whose id is its folder's name, in the
    order of their ids. Any other entry (edited, renamed, a link, not a bundle) is skipped, with a
    warning naming it; the store's own staging folders (`.<name>.partial`) are skipped silently.
    A store that is missing or a link holds nothing."""
    store = folder(site)
    if store.is_symlink() or not store.is_dir():
        return []
    found = []
    for entry in sorted(store.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() or not _ENTRY.fullmatch(entry.name):
            log.warning("site %s skips %s/%s: not a stored bundle (a folder named by a bundle id's 64 hex digits)",
                        site.name, STORE, entry.name)
            continue
        try:
            found.append(require_intact(entry, f"sha256:{entry.name}"))
        except BundleError as e:
            log.warning("site %s skips %s/%s: %s", site.name, STORE, entry.name, e)
    return found
