"""Bundles in transit: `pack` zips an intact bundle for the sites, `unpack` takes one from untrusted hands.

What travels is the bundle (manifest.json and its listed files) plus the records that are
information for the reviewer (`TRAVELLING_RECORDS`); nothing in a pack is trusted on arrival:
`unpack` streams it within limits, refuses unsafe names, links and other records, and checks
the result with `verify`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from pathlib import Path

from ..contracts.errors import BundleError
from ..contracts.fileset import MANIFEST, RECORDS
from ..contracts.fsutil import staged_dir, write_atomic
from .bundle import Bundle, load, require_intact, verify

# Records are information from the researcher's machine, never trusted; only these travel in a
# pack (a reviewer renders the review from the hashed files with `caia review`).
TRAVELLING_RECORDS = ("build.json", "validation.json", "validation.ipynb")
# Limits for unpacking an archive from another machine. A bundle is code and config (KiB),
# requirements, captured pickles of at most a few MiB (freenames.MAX_OPAQUE_BYTES each) and
# records (an executed notebook of a few hundred KiB): 64 MiB leaves a wide margin. Deflate
# gives 2-10x on code, JSON and pickles and 1000x only on runs of one byte, so an entry that
# expands over 100x beyond its first MiB is a bomb. A bundle has a handful of files.
MAX_UNPACKED_BYTES = 64 << 20
MAX_EXPANSION_RATIO = 100
RATIO_GRACE_BYTES = 1 << 20
MAX_ENTRIES = 256
# A bundle is at most 3 levels deep (top/records/x, top/captured/x.pkl) with short names; these
# bounds, checked before anything else about a name, keep one name's cost small.
MAX_NAME_CHARS = 1024
MAX_PART_CHARS = 255
MAX_DEPTH = 8
CHUNK_BYTES = 1 << 16
ZIP_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, RuntimeError, zipfile.BadZipFile, zlib.error)


def pack(path: str | Path, output: str | Path | None = None) -> Path:
    """Zip an intact bundle for transport; the same bundle gives the same bytes.

    The zip holds one top folder (the bundle's name) with manifest.json, the listed files and
    the TRAVELLING_RECORDS present. A symbolic link or special file anywhere in the bundle
    folder, or a bundle `unpack` would refuse for its size, raises BundleError naming it.
    """
    path = Path(path)
    if os.path.lexists(path / MANIFEST):  # a bundle folder: refuse links before reading through one
        _refuse_links(path)
    bundle = require_intact(path)
    output = Path(output) if output else bundle.path.with_suffix(".zip")
    names = [MANIFEST, *bundle.manifest["files"]]
    names += [f"{RECORDS}/{name}" for name in TRAVELLING_RECORDS if (bundle.records / name).is_file()]
    refused, total = f"bundle {bundle.path} cannot be packed (`caia unpack` would refuse it)", 0
    if len(names) > MAX_ENTRIES:
        raise BundleError(f"{refused}: {len(names)} files, more than {MAX_ENTRIES}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(names):
            info = zipfile.ZipInfo(f"{bundle.path.name}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, _read_plain_file(bundle.path / name))
        for info in archive.infolist():
            total += info.file_size
            _check_expansion(info.filename, info.file_size, info.compress_size, total, refused)
    write_atomic(output, buffer.getvalue())
    return output


def unpack(archive_path: str | Path, output: str | Path | None = None) -> Bundle:
    """Extract a packed bundle from untrusted hands into `output` and check it is intact.

    Entries are streamed to disk and counted as they expand (header sizes are not trusted),
    within MAX_UNPACKED_BYTES in all, MAX_EXPANSION_RATIO per entry and MAX_ENTRIES. Refused
    with a one-line BundleError, nothing written: an archive that is not a zip, damaged or
    over a limit; an unsafe name (absolute, `..`, backslash, drive letter, empty part), a
    duplicate, a name both file and folder, a symbolic link or special file, more than one
    top folder; a record other than TRAVELLING_RECORDS; an extracted bundle that is not intact.
    """
    archive_path = Path(archive_path)
    refused = f"{archive_path} is not a packed bundle"
    try:
        if archive_path.stat().st_size > MAX_UNPACKED_BYTES:  # bounds what zipfile reads of its directory, too
            raise BundleError(f"{refused}: it is larger than {MAX_UNPACKED_BYTES >> 20} MiB")
        with zipfile.ZipFile(archive_path) as archive:
            top, entries = _checked_entries(archive.infolist(), refused)
            target = Path(output) if output else archive_path.parent / top
            if target.exists() or target.is_symlink():
                raise BundleError(f"{target} already exists; choose another place with -o")
            with staged_dir(target) as stage:
                _extract(archive, entries, stage, refused)
                _, problems = verify(stage)
                if problems:
                    raise BundleError(f"bundle in {archive_path} is not intact: {problems[0]}")
    except ZIP_ERRORS as e:
        raise BundleError(f"{refused}: {_one_line(e)}") from e
    return load(target)


def _refuse_links(folder: Path) -> None:
    """Refuse a symbolic link or special file anywhere under `folder`, following none."""
    for parent, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            where = Path(parent, name)
            mode = where.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                raise BundleError(
                    f"{where.relative_to(folder)} in bundle {folder} is {kind}; a bundle holds plain files only: "
                    "remove it, or rebuild the bundle"
                )


def _read_plain_file(path: Path) -> bytes:
    """The bytes of a regular file, never through a symbolic link at its last component."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise BundleError(f"cannot read {path} ({e.strerror}); a bundle holds plain, readable files") from e
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise BundleError(f"{path} is not a plain file; a bundle holds plain files only")
        return file.read()


def _checked_entries(infos: list[zipfile.ZipInfo], refused: str) -> tuple[str, list[tuple[zipfile.ZipInfo, str]]]:
    """(top folder, [(file entry, its path inside the bundle)]) of a safe archive, else BundleError."""
    if len(infos) > MAX_ENTRIES:
        raise BundleError(f"{refused}: {len(infos)} entries, more than {MAX_ENTRIES}")
    travelling = {f"{RECORDS}/{name}" for name in TRAVELLING_RECORDS}
    tops, seen, folders, files = set(), set(), set(), []
    for info in infos:
        parts = info.filename.removesuffix("/").split("/")
        problem = _name_problem(info, parts)
        if problem:
            shown = info.filename if len(info.filename) <= 100 else info.filename[:100] + "…"
            raise BundleError(f"{refused}: {problem} in entry {shown!r}")
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()  # one file on every file system
        inside = key.partition("/")[2]
        if inside.split("/")[0] == RECORDS and inside not in ({RECORDS} if info.is_dir() else travelling):
            raise BundleError(
                f"{refused}: entry {info.filename!r} is not a record that may travel (only {', '.join(sorted(travelling))}); "
                "records are information: render the review from the bundle with `caia review`"
            )
        if key in seen:
            raise BundleError(f"{refused}: entry {info.filename!r} appears twice")
        seen.add(key)
        tops.add(parts[0])
        folders.update(key.rsplit("/", n)[0] for n in range(1, key.count("/") + 1))
        if info.is_dir():
            folders.add(key)
        else:
            files.append((info, key, "/".join(parts[1:])))
    if len(tops) != 1:
        raise BundleError(f"{refused}: " + ("it is empty" if not tops else f"more than one top folder ({', '.join(map(repr, sorted(tops)[:3]))})"))
    clash = next((info.filename for info, key, _ in files if key in folders), None)
    if clash:
        raise BundleError(f"{refused}: entry {clash!r} is both a file and a folder")
    return tops.pop(), [(info, inside) for info, _, inside in files]


def _name_problem(info: zipfile.ZipInfo, parts: list[str]) -> str | None:
    mode = info.external_attr >> 16
    if not info.filename:
        return "empty name"
    if len(info.filename) > MAX_NAME_CHARS:
        return f"a name of {len(info.filename)} characters (at most {MAX_NAME_CHARS})"
    if len(parts) > MAX_DEPTH:
        return f"a path {len(parts)} levels deep (at most {MAX_DEPTH})"
    if any(len(part) > MAX_PART_CHARS for part in parts):
        return f"a file or folder name longer than {MAX_PART_CHARS} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in info.filename):
        return "control character"
    if "\\" in info.filename:
        return "backslash"
    if info.filename.startswith("/"):
        return "absolute path"
    if ".." in parts:
        return "path leaving the folder"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' part"
    if any(re.match(r"[A-Za-z]:", part) for part in parts):
        return "drive letter"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    if len(parts) == 1 and not info.is_dir():
        return "file outside the top folder"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return "compression other than deflate"
    return None


def _extract(archive: zipfile.ZipFile, entries: list[tuple[zipfile.ZipInfo, str]], stage: Path, refused: str) -> None:
    """Stream each entry to `stage`, counting the bytes it really expands to."""
    total = 0
    for info, inside in entries:
        destination = stage / inside
        destination.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with archive.open(info) as source, open(destination, "xb") as sink:
            while chunk := source.read(CHUNK_BYTES):
                size += len(chunk)
                total += len(chunk)
                _check_expansion(info.filename, size, info.compress_size, total, refused)
                sink.write(chunk)


def _check_expansion(name: str, size: int, compressed: int, total: int, refused: str) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"{refused}: it expands to more than {MAX_UNPACKED_BYTES >> 20} MiB")
    if size > RATIO_GRACE_BYTES and size > MAX_EXPANSION_RATIO * max(compressed, 1):
        raise BundleError(f"{refused}: entry {name!r} expands more than {MAX_EXPANSION_RATIO} times")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
