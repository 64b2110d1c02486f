"""Every version of a bundle folder, kept per bundle id beside it.

A bundle folder holds one bundle at a time (the notebook's latest build), so its records/ forget a
validation as soon as the code changes. The history keeps, per bundle id ever built into the folder
`bundles/NAME`, in `bundles/.history/NAME/<64 hex>/` (no bundle folder is named `.history`, so no
bundle folder is ever a history or inside one):

    build.json        the build record: the manifest, the federated cells (ordinal, sha256 of the source)
    validation.json   the validation record of that id, and validation.ipynb, the executed notebook

so going back to code that passed finds its pass again, and the panel can say what changed since the
version a site approved. Every file is untrusted, as records/ are: a record counts only for the bundle
id it names, and only once `validation.require_passed` checks it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pydantic import ValidationError

from ..contracts.errors import BundleError
from ..contracts.fileset import MODULE
from ..contracts.fsutil import read_json, write_atomic, write_json
from ..contracts.manifest import Manifest, bundle_id, same_json

BUILD, VALIDATION, EXECUTED = "build.json", "validation.json", "validation.ipynb"
HISTORY = ".history"  # beside bundle folders, the folder of their histories
_HEX = re.compile(r"[0-9a-f]{64}")


def folder(bundle_path: Path) -> Path:
    """The history folder of the bundle folder `bundle_path`: `.history/<its name>` beside it (the path
    made absolute first, so `.` names the folder it is). Raises BundleError, one line, for a bundle
    folder named `.history`, which would hold the histories of its neighbours."""
    bundle_path = Path(os.path.abspath(bundle_path))
    if bundle_path.name == HISTORY:
        raise BundleError(f"{bundle_path} cannot be a bundle folder: caia keeps bundle histories in folders named "
                          f"{HISTORY}; rename the notebook (or give another --output)")
    return bundle_path.parent / HISTORY / bundle_path.name


def entry(bundle_path: Path, bundle_id: str) -> Path:
    """The folder of one bundle id (`sha256:<64 hex>`) in the history of `bundle_path`."""
    return folder(bundle_path) / bundle_id.removeprefix("sha256:")


def require_writable(bundle_path: Path, bundle_id: str) -> Path:
    """The history entry of `bundle_id`, once no folder on the way to it from beside the bundle folder
    (`.history`, `.history/NAME`, the entry) is a symbolic link, which a write would follow out of
    the folder; raises BundleError, one line naming the link, otherwise. Nothing is created."""
    where = entry(bundle_path, bundle_id)
    for path in (where.parent.parent, where.parent, where):
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link; caia writes the bundle's history there, so make it a "
                              "plain folder (or remove it)")
    return where


def remember_build(bundle_path: Path, build_record: dict) -> None:
    """Keep the build record (with its manifest) of `build_record["bundle_id"]` (BundleError as
    `require_writable`)."""
    write_json(require_writable(bundle_path, build_record["bundle_id"]) / BUILD, build_record)


def remember_validation(bundle_path: Path, bundle_id: str, record: dict, executed: bytes) -> None:
    """Keep the validation record of `bundle_id` and its executed notebook (bytes of .ipynb JSON)
    (BundleError as `require_writable`)."""
    where = require_writable(bundle_path, bundle_id)
    write_atomic(where / EXECUTED, executed)
    write_json(where / VALIDATION, record)


def validation(bundle_path: Path, bundle_id: str) -> dict | None:
    """The kept validation record of exactly `bundle_id` (a JSON object naming that id), else None."""
    record = read_json(entry(bundle_path, bundle_id) / VALIDATION)
    return record if record.get("bundle_id") == bundle_id else None


def records_of(bundle_path: Path, bundle_id: str) -> dict[str, bytes]:
    """The kept validation files of `bundle_id` (name -> bytes) a new build of that id restores into
    its records/; {} when none was kept for exactly that id."""
    if validation(bundle_path, bundle_id) is None:
        return {}
    where = entry(bundle_path, bundle_id)
    return {name: (where / name).read_bytes() for name in (VALIDATION, EXECUTED) if (where / name).is_file()}


def builds(bundle_path: Path) -> list[dict]:
    """The kept build records, newest build first; one that is not `checked` or is misfiled (its id
    not its folder's name) is left out. The panel asks every few seconds: a record file whose
    identity and size and modification time are unchanged is not read and checked again."""
    found = []
    root = folder(bundle_path)
    for path in root.iterdir() if root.is_dir() else ():
        record = _checked_file(path / BUILD) if _HEX.fullmatch(path.name) else None
        if record and record["bundle_id"] == f"sha256:{path.name}":
            found.append(record)
    return sorted(found, key=lambda r: r["built_at"], reverse=True)


_CHECKED: dict[Path, tuple[tuple, dict | None]] = {}  # build.json -> (its stat, what `checked` made of it)


def _checked_file(path: Path) -> dict | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _CHECKED.get(path)
    if cached is None or cached[0] != key:
        cached = _CHECKED[path] = key, checked(read_json(path))
    return cached[1]


def checked(record) -> dict | None:
    """`record`, a build record read from a file (untrusted), when it has a build record's shape and
    its manifest hashes to the bundle id it names (`contracts.manifest.bundle_id`), else None.

    Its shape: "bundle_id" and "built_at" strings, "manifest" one `Manifest` accepts. Its "cells" are
    not covered by the id: a list of {"ordinal": int, "sha256": str, ...} is kept, anything else
    becomes None (the record's code cells are unknown; `changes` then compares the code as a whole)."""
    if not isinstance(record, dict) or not isinstance(record.get("built_at"), str):
        return None
    manifest = record.get("manifest")
    try:
        Manifest.model_validate(manifest)
    except ValidationError:
        return None
    if bundle_id(manifest) != record.get("bundle_id"):
        return None
    cells = record.get("cells", [])
    sound = isinstance(cells, list) and all(isinstance(c, dict) and type(c.get("ordinal")) is int
                                            and isinstance(c.get("sha256"), str) for c in cells)
    return record if sound else {**record, "cells": None}


def changes(old: dict, new: dict) -> list[str]:
    """What changed from build record `old` to `new` (each one `checked` accepts), one short phrase
    each: federated code cells by their ordinal in the panel's list ("federated cell 2 changed", "federated cell 4 added"; "federated code changed"
    when a record's cells are unknown), job settings ("param lr: 0.1 -> 0.2",
    "rounds: 3 -> 5"), datasets and their columns, values captured from the kernel."""
    said = []
    old_m, new_m = old.get("manifest", {}), new.get("manifest", {})
    if old.get("cells", []) is None or new.get("cells", []) is None:  # cells unknown: the code as a whole
        if old_m.get("files", {}).get(MODULE) != new_m.get("files", {}).get(MODULE):
            said.append("federated code changed")
        before = after = {}
    else:
        before = {c["ordinal"]: c["sha256"] for c in old.get("cells", [])}
        after = {c["ordinal"]: c["sha256"] for c in new.get("cells", [])}
    said += keyed("federated cell", before, after, "changed")
    said += job_changes(old_m.get("job", {}), new_m.get("job", {}))
    said += keyed("dataset", old_m.get("datasets", {}), new_m.get("datasets", {}), "columns changed")
    captured = {p: e.get("sha256") for p, e in old_m.get("files", {}).items() if p.startswith("captured/")}
    if captured != {p: e.get("sha256") for p, e in new_m.get("files", {}).items() if p.startswith("captured/")}:
        said.append("captured values changed")
    standards = {p: e.get("sha256") for p, e in old_m.get("files", {}).items() if p.startswith("standards/")}
    if standards != {p: e.get("sha256") for p, e in new_m.get("files", {}).items() if p.startswith("standards/")}:
        said.append("dataset standards changed")
    if not said and old_m != new_m:
        said.append("caia or Python version changed")
    return said


def job_changes(old_job: dict, new_job: dict) -> list[str]:
    """What changed between two manifests' job settings, one phrase each: "param lr: 0.1 -> 0.2",
    "rounds: 2 -> 3", "privacy added: {...}", "encryption removed (was he)"."""
    old_job, new_job = dict(old_job), dict(new_job)
    old_params, new_params = old_job.pop("params", {}) or {}, new_job.pop("params", {}) or {}
    return value_changes("param ", old_params, new_params) + value_changes("", old_job, new_job)


def keyed(what: str, old: dict, new: dict, changed: str) -> list[str]:
    """"WHAT KEY added", "WHAT KEY removed" or "WHAT KEY <changed>" for each key whose value differs
    as JSON (`same_json`)."""
    said = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            said.append(f"{what} {key} added")
        elif key not in new:
            said.append(f"{what} {key} removed")
        elif not same_json(old[key], new[key]):
            said.append(f"{what} {key} {changed}")
    return said


def value_changes(prefix: str, old: dict, new: dict) -> list[str]:
    """"PREFIXKEY added: NEW", "PREFIXKEY removed (was OLD)" or "PREFIXKEY: OLD -> NEW" for each key
    whose value differs as JSON (`same_json`: 1 -> true and 1 -> 1.0 are changes), values cut to
    40 characters."""
    said = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            said.append(f"{prefix}{key} added: {_short(new[key])}")
        elif key not in new:
            said.append(f"{prefix}{key} removed (was {_short(old[key])})")
        elif not same_json(old[key], new[key]):
            before, after = _short(old[key]), _short(new[key])
            if before == after:  # "1" and 1 read alike: show them as JSON
                before, after = _short(json.dumps(old[key])), _short(json.dumps(new[key]))
            said.append(f"{prefix}{key}: {before} -> {after}")
    return said


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
