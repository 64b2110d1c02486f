"""A site's audit log: an append-only, hash-chained record of what its reviewers signed and what its
guard admitted or refused.

`<site>/audit.jsonl` holds one JSON object per line, as `record` writes it (canonical JSON):

    {"seq": 1, 2, ... in order, "time": "2026-01-31T12:00:00Z" (UTC), "event": one of EVENTS,
     "bundle_id": "sha256:..." ("" when a refused app had none), "key_id": the reviewer key (16 hex) or null,
     "outcome": "signed" | "admitted" | "refused", "reason": one line (may be ""),
     "prev": sha256 hex of the previous record's line ("0" * 64 for the first),
     "hash": sha256 hex of the canonical JSON of this record without "hash"}

Reviewers' `caia approve`, `caia revoke` and `caia reject` record "approval", "revocation" and
"rejection" when they write into the site; the guard records each "admission" (the key id of the
approval it admitted with) and "refusal" (its own reason: the log is the site's). Several NVFLARE
processes of one site may admit at once, so an append holds an exclusive `flock` on the file.

`verify` reads the file as untrusted input and names each problem by record: an edited record
(its hash, or the next record's link to it, does not match), a deleted one (a gap in seq), records
out of order, a malformed line (a text field holding control characters, which `record` never
writes, is one: it could disguise the log on a terminal). The chain alone cannot show that its LAST records were deleted: what
is left is still a valid chain. `verify(site, head=HASH)` checks that the log still holds the head
an earlier audit printed (`caia site audit DIR --head HASH`), which the site's admin keeps
elsewhere; a log truncated (or rewritten) since is then named. A chain is evidence of tampering
by someone without that head, not a lock: whoever can write the file can also delete it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path

from ..contracts.errors import CaiaError, SiteError
from ..contracts.fsutil import loads_strict
from ..contracts.manifest import canonical
from .approvals import iso
from .sites import Site

AUDIT = "audit.jsonl"
EVENTS = ("approval", "revocation", "rejection", "admission", "refusal")
GENESIS = "0" * 64  # the "prev" of the first record, and the head of an empty log
MAX_TEXT = 500  # characters of a record's text field; a reason is one line, not a document
MAX_LINE = 8 * 1024  # bytes of a record's line; caia writes well under 2 KiB
MAX_PROBLEMS = 200  # problems named one by one; a file of garbage is summed up after that
MAX_SEQ = 2**53 - 1  # the largest seq: an integer any JSON reader holds exactly
_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_FIELDS = ("seq", "time", "event", "bundle_id", "key_id", "outcome", "reason", "prev", "hash")


def audit_file(site: Site | str | Path) -> Path:
    """The audit log of `site` (a Site or a site directory)."""
    return (site.path if isinstance(site, Site) else Path(site)) / AUDIT


def record(site: Site, event: str, bundle_id: str, key_id: str | None, outcome: str, reason: str = "",
           now: datetime | None = None) -> dict:
    """Append one record to the site's audit log, under an exclusive lock, and return it (the dict
    written, "hash" included). Text fields are made one line (control characters become a space)
    and cut to MAX_TEXT characters. The file is created (mode 0644) if absent.

    Raises CaiaError for an `event` not in EVENTS, SiteError (one line naming the file) when the log
    cannot be written: it is a link or not a plain file, its last whole line is not a record (edited,
    or a seq above MAX_SEQ), or the write fails.
    """
    if event not in EVENTS:
        raise CaiaError(f"audit event {event!r} is not one of {', '.join(EVENTS)}")
    file = audit_file(site)
    try:
        fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:  # ELOOP: a symbolic link, never written through
        raise SiteError(f"site {site.name} cannot open its audit log {AUDIT} ({e.strerror}); it must be a plain file "
                        "the site's processes can write") from None
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SiteError(f"site {site.name}'s audit log {AUDIT} is not a plain file; move it away and keep it as evidence")
        last = _last_record(f, site)
        entry = {"seq": last[0]["seq"] + 1 if last else 1,
                 "time": iso(now or datetime.now(timezone.utc)), "event": event,
                 "bundle_id": _text(bundle_id), "key_id": _text(key_id) if key_id is not None else None,
                 "outcome": _text(outcome), "reason": _text(reason),
                 "prev": _digest(last[1]) if last else GENESIS}
        entry["hash"] = _digest(canonical(entry))
        torn = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"  # a writer crashed mid-line
        try:
            os.write(fd, (b"\n" if torn else b"") + canonical(entry) + b"\n")
            os.fsync(fd)
        except OSError as e:
            raise SiteError(f"site {site.name} cannot write its audit log {AUDIT} ({e.strerror})") from None
    return entry


def verify(site: Site | str | Path, head: str | None = None) -> tuple[list[dict], list[str]]:
    """The records of the site's audit log (file order) and the problems found, each one line naming
    the record (by its seq) or the line: "record 3 was edited ...", "record 4 is missing (deleted)",
    "records 5 and 6 are out of order", "line 7 is malformed (...)". Given `head` (a head hash an
    earlier audit printed, `head_of`), also whether the log still holds it: if not, the records after
    the last one left were deleted, or the log rewritten. A missing log is an empty one.

    Never raises for the file's content; raises CaiaError for a `head` that is not 64 hex digits.
    """
    if head is not None and not _HEX.fullmatch(head):
        raise CaiaError(f"--head {head[:80]!r} is not a head hash; give the 64 hex digits `caia site audit` printed as head")
    records, lines, problems = [], {}, []  # lines: id(record) -> its line's bytes
    for number, line, why in _lines(audit_file(site), problems):
        found, why = (None, why) if why else _parse(line)
        if found is None:
            problems.append(f"line {number} is malformed ({why})")
            continue
        records.append(found)
        lines[id(found)] = line
    problems += _chain_problems(records, lines, malformed=any(p.startswith("line ") for p in problems))
    if head is not None and head != GENESIS and head not in {_digest(line) for line in lines.values()}:
        last = max((r["seq"] for r in records), default=0)
        problems.append(f"the log no longer holds head {head[:12]}…: the records after record {last} were deleted "
                        "(or the log was rewritten)" if last else
                        f"the log no longer holds head {head[:12]}…: every record was deleted")
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    return records, problems


def head_of(records: list[dict]) -> str:
    """The head hash of a log whose records `verify` returned: the sha256 of the last record's line
    (what the next record's "prev" will be), GENESIS for an empty log. Kept elsewhere, it lets a
    later `verify(site, head=...)` see the log's last records deleted."""
    return _digest(canonical(records[-1])) if records else GENESIS


def _chain_problems(records: list[dict], lines: dict[int, bytes], malformed: bool) -> list[str]:
    problems, edited = [], set()
    for r in records:
        if r["hash"] != _digest(canonical({k: v for k, v in r.items() if k != "hash"})):
            problems.append(f"record {r['seq']} was edited (its hash does not match its content)")
            edited.add(r["seq"])
        elif lines[id(r)] != canonical(r):
            problems.append(f"record {r['seq']} was edited (its line is not as caia wrote it)")
            edited.add(r["seq"])
    for before, after in zip(records, records[1:]):
        if after["seq"] < before["seq"]:
            problems.append(f"records {after['seq']} and {before['seq']} are out of order "
                            f"(record {after['seq']} stands after record {before['seq']})")
    by_seq = {}
    for r in records:
        if r["seq"] in by_seq:
            problems.append(f"record {r['seq']} appears more than once (copied or replayed)")
        by_seq.setdefault(r["seq"], r)
    seqs = sorted(by_seq)
    why = "deleted, or one of the malformed lines" if malformed else "deleted"
    for low, high in zip([0, *seqs], seqs):
        if high > low + 1:
            problems.append(f"record {low + 1} is missing ({why})" if high == low + 2 else
                            f"records {low + 1} to {high - 1} are missing ({why})")
    first = by_seq.get(1)
    if first is not None and first["prev"] != GENESIS and 1 not in edited:
        problems.append("record 1 does not begin the chain (its prev is not the genesis hash): it was edited")
    for seq in seqs:
        before, after = by_seq.get(seq - 1), by_seq[seq]
        if before is not None and not {seq - 1, seq} & edited and after["prev"] != _digest(lines[id(before)]):
            problems.append(f"record {seq - 1} was edited or replaced (record {seq} does not chain to it)")
    return problems


def _parse(line: bytes) -> tuple[dict | None, str]:
    """The record on a line, or None and why it is none."""
    try:
        found = loads_strict(line)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        return None, "not JSON" if not isinstance(e, UnicodeDecodeError) else "not UTF-8"
    if not isinstance(found, dict) or tuple(sorted(found)) != tuple(sorted(_FIELDS)):
        return None, f"not an object with exactly the fields {', '.join(_FIELDS)}"
    checks = {
        "seq": lambda v: type(v) is int and 1 <= v <= MAX_SEQ,
        "time": lambda v: isinstance(v, str) and _is_time(v),
        "event": lambda v: v in EVENTS,
        "bundle_id": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT,
        "key_id": lambda v: v is None or (isinstance(v, str) and len(v) <= MAX_TEXT),
        "outcome": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT,
        "reason": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT,
        "prev": lambda v: isinstance(v, str) and bool(_HEX.fullmatch(v)),
        "hash": lambda v: isinstance(v, str) and bool(_HEX.fullmatch(v)),
    }
    for name, ok in checks.items():
        if not ok(found[name]):
            return None, f"{name} is not {'one of ' + ', '.join(EVENTS) if name == 'event' else 'valid'}"
    for name in ("time", "bundle_id", "key_id", "outcome", "reason"):  # `record` makes each one line
        if isinstance(found[name], str) and _CONTROL.search(found[name]):
            return None, f"{name} holds control characters, which caia never writes"
    try:
        canonical(found)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") that caia never writes
        return None, "text that is not valid Unicode"
    return found, ""


def _lines(file: Path, problems: list[str]):
    """(line number, bytes without the newline, "" or why it is unreadable) of each non-empty line of
    the log (none if it does not exist). A log that is a link or not a plain file is a problem."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as e:
        problems.append(f"{AUDIT} cannot be read ({e.strerror}); it must be a plain file, not a link")
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            problems.append(f"{AUDIT} is not a plain file")
            return
        yield from _read_lines(f)


def _read_lines(f):
    """`_lines` of an open file, from where it stands, reading at most MAX_LINE bytes of any line."""
    number = 0
    while line := f.readline(MAX_LINE + 1):
        number += 1
        why = ""
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            why = f"longer than {MAX_LINE} bytes"
            while (rest := f.readline(64 * 1024)) and not rest.endswith(b"\n"):
                pass
        elif not line.endswith(b"\n"):
            why = "cut short: no newline at its end"
        if line.strip():
            yield number, line.rstrip(b"\n"), why


def _last_record(f, site: Site) -> tuple[dict, bytes] | None:
    """The last record of the open log and its line, read from the tail. A last line cut short (a
    writer crashed mid-line) is passed over: the last well-formed record of the whole file then.
    Raises SiteError, one line naming the log, when the last whole line is not a record: the chain
    is not appended to a log whose end is broken."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return None
    f.seek(max(0, size - MAX_LINE - 1))
    tail = f.read()
    if tail.endswith(b"\n"):
        line = tail[:-1].rsplit(b"\n", 1)[-1]
        whole = len(line) < len(tail) - 1 or size <= MAX_LINE  # the whole line is in the tail
        found, why = _parse(line) if whole else (None, f"longer than {MAX_LINE} bytes")
        if found is None:
            raise SiteError(f"site {site.name}'s audit log {AUDIT} ends in a malformed record ({why}), so nothing can be "
                            f"chained to it; run `caia site audit {site.path}` and keep the log as evidence")
        return found, line
    last = None
    f.seek(0)
    for _, line, why in _read_lines(f):
        found, _ = (None, why) if why else _parse(line)
        if found is not None and (last is None or found["seq"] > last[0]["seq"]):
            last = found, line
    return last


def _text(value) -> str:
    """`value` as one line of at most MAX_TEXT characters."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot be written
    return _CONTROL.sub(" ", text).strip()[:MAX_TEXT]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False
