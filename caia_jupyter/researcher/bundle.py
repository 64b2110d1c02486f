"""A bundle on disk: open it, and check that it is intact.

A bundle is a directory holding exactly caia's file set (`fileset`): federated.py, caia_runner.py,
config_fed_client.json, requirements.txt, captured/*.pkl, and manifest.json listing each with its
sha256 and size, the datasets and the job settings. Everything but records/ (not hashed:
build.json, validation.json, validation.ipynb, review.html) is what runs at a site, and the bundle
id covers all of it. `compose` builds one from a notebook.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..contracts.errors import BundleError
from ..contracts.fileset import CAPTURED_DIR, MANIFEST, RECORDS, STANDARDS_DIR, content_problems, listing_problems
from ..contracts.fsutil import loads_strict, read_json
from ..contracts.manifest import Manifest, bundle_id, canonical, same_json
from .wording import plural

CELL_MARK = "# ---- federated cell {} ----"  # composing writes it above each cell; the review splits there


@dataclass(frozen=True)
class Bundle:
    path: Path
    id: str
    manifest: dict

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def records(self) -> Path:
        return self.path / RECORDS

    def record(self, name: str) -> dict | None:
        """A JSON object record beside the bundle (untrusted), or None if absent, unreadable or
        not an object."""
        return read_json(self.records / name) or None

    @property
    def opaque_files(self) -> dict[str, dict]:
        return {name: entry for name, entry in self.manifest["files"].items() if entry.get("opaque")}

    def source(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def file(self, name: str) -> bytes:
        """The bytes of bundle file `name`, as its manifest lists them. Raises BundleError (one line)
        for a file the manifest does not list or whose bytes are no longer the listed ones."""
        entry = self.manifest["files"].get(name)
        try:
            data = (self.path / name).read_bytes()
        except OSError:
            data = None
        if entry is None or data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"bundle {self.path} is not intact: {name} is not the file its manifest lists; "
                              f"run `caia verify {self.path}`")
        return data


def load(path: str | Path) -> Bundle:
    """Open a bundle directory (or its manifest.json) without checking its files."""
    path = Path(path)
    if path.name == "manifest.json":
        path = path.parent
    manifest = _read_manifest(path)
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        error = e.errors()[0]
        raise BundleError(f"{path}/manifest.json field {_dotted(error['loc'])}: {error['msg']}; rebuild the bundle") from e
    return Bundle(path, bundle_id(manifest), manifest)


def verify(path: str | Path, expected_id: str | None = None) -> tuple[str | None, list[str]]:
    """Recompute everything; return (bundle id, problems). No problems means intact."""
    path = Path(path)
    try:
        manifest = _read_manifest(path)
    except BundleError as e:
        return None, [str(e)]
    problems = [
        f"manifest field {_dotted(error['loc'])}: {error['msg']}"
        for error in _validation_errors(manifest)
    ]
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    problems += listing_problems(listed, manifest.get("job") if isinstance(manifest, dict) else None)
    present, odd = _present_files(path)
    problems += odd
    missing = [name for name in listed if name not in present]
    added = [name for name in present if name not in listed]
    for name in list(added):
        digest = hashlib.sha256(present[name]).hexdigest()
        twin = next((m for m in missing if isinstance(listed[m], dict) and listed[m].get("sha256") == digest), None)
        if twin:
            problems.append(f"file renamed: {twin} -> {name}")
            missing.remove(twin)
            added.remove(name)
    problems += [f"file missing: {name}" for name in missing]
    problems += [f"file added: {name} (not in the manifest)" for name in added]
    for name, entry in listed.items():
        if name not in present or not isinstance(entry, dict):
            continue
        data = present[name]
        digest = hashlib.sha256(data).hexdigest()
        if entry.get("size") != len(data):
            problems.append(f"file {name}: size {plural(len(data), 'byte')}, manifest says {entry.get('size')}")
        if entry.get("sha256") != digest:
            problems.append(f"file {name}: sha256 {digest[:16]}…, manifest says {str(entry.get('sha256'))[:16]}…")
        else:
            problems += content_problems(name, data, entry, manifest.get("job"))

    actual = bundle_id(manifest)
    record = read_build_record(path)
    reference = expected_id or (record or {}).get("bundle_id")
    if reference and actual != reference:
        built = (record or {}).get("manifest")
        if isinstance(built, dict) and bundle_id(built) == reference:
            problems += [f"manifest field {field} was edited: {old} -> {new}" for field, old, new in json_changes(built, manifest)]
        problems.append(f"bundle id is {actual}, expected {reference}")
    return actual, problems


def require_intact(path: str | Path, expected_id: str | None = None) -> Bundle:
    """Load a bundle, refusing it with the first problem `verify` finds."""
    _read_manifest(Path(path))  # no bundle at all is said plainly
    bid, problems = verify(path, expected_id)
    if problems:
        more = f" (and {len(problems) - 1} more; run `caia verify {path}`)" if len(problems) > 1 else ""
        raise BundleError(f"bundle {path} is not intact: {problems[0]}{more}")
    return load(path)


def checked_copy(bundle: Bundle, destination: str | Path) -> Bundle:
    """Copy `bundle`'s folder (without records/, links copied as links) to `destination` (which must not
    exist) and return the copy, checked against `bundle.id`: what is read from the copy is what that id
    covers, whatever happens to the original folder meanwhile (a rebuild). Raises BundleError, one
    line, when the folder no longer holds that id."""
    destination = Path(destination)
    shutil.copytree(bundle.path, destination, ignore=shutil.ignore_patterns(RECORDS), symlinks=True)
    return require_intact(destination, bundle.id)


def read_build_record(path: str | Path) -> dict | None:
    """The build record of the bundle folder at `path` (records/build.json), or None if absent,
    unreadable or not a JSON object."""
    return read_json(Path(path) / RECORDS / "build.json") or None


def _read_manifest(path: Path) -> dict:
    file = path / "manifest.json"
    if not file.is_file():
        if path.suffix.lower() == ".zip" and path.is_file():
            raise BundleError(f"{path} is a packed bundle; unpack it first with `caia unpack {path}` and give the folder "
                              "it prints")
        raise BundleError(f"{path} is not a bundle (no manifest.json); build and validate it with `caia validate NOTEBOOK`")
    try:
        manifest = loads_strict(file.read_bytes())  # as the site's guard reads it: no duplicate key, no NaN
    except (UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{file} is not valid JSON ({type(e).__name__}); rebuild the bundle") from e
    except ValueError as e:
        raise BundleError(f"{file} is not valid JSON ({' '.join(str(e).split())[:200]}); rebuild the bundle") from e
    except OSError as e:
        raise BundleError(f"cannot read {file} ({e.strerror}); a bundle holds plain, readable files") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{file} is not a JSON object; rebuild the bundle")
    try:
        canonical(manifest)
    except UnicodeEncodeError as e:  # a lone surrogate: "\ud800" is valid JSON but no text; the id cannot cover it
        raise BundleError(f"{file} holds text that is not valid Unicode (a lone surrogate); rebuild the bundle") from e
    return manifest


def _validation_errors(manifest: dict) -> list[dict]:
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        return e.errors()
    return []


def _present_files(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """The regular files of a bundle folder outside records/ (bundle path -> bytes), and a problem for
    anything that is not a plain file or folder. Links are never followed."""
    present, odd = {}, []
    for folder, dirs, files in os.walk(path):
        relative = Path(folder).relative_to(path)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d != RECORDS]
            files = [f for f in files if f != MANIFEST]
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            shown = (relative / name).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                odd.append(f"file {shown} is a symbolic link; bundles hold plain files")
                dirs[:] = [d for d in dirs if d != name]
            elif stat.S_ISREG(mode):
                present[shown] = entry.read_bytes()
            elif stat.S_ISDIR(mode):
                if shown not in (CAPTURED_DIR, STANDARDS_DIR):
                    odd.append(f"folder {shown}/ is not part of a bundle")
            else:
                odd.append(f"{shown} is not a plain file; bundles hold plain files")
    return present, odd


def _dotted(loc) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def json_changes(old, new, prefix=""):
    """(dotted field, old as JSON text, new as JSON text) for every leaf that differs between two JSON
    documents, as JSON (`same_json`: 1, 1.0 and true differ); "(absent)" for a key only one has;
    lists of different lengths compare as one leaf."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from json_changes(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            yield from json_changes(a, b, f"{prefix}.{index}")
    elif not same_json(old, new):
        yield prefix or "(root)", json.dumps(old), json.dumps(new)
