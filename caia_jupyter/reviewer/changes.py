"""What changed in a bundle since a bundle its site approved before.

The base is the closest earlier approved bundle in the site's store (`store.approved_bundles`): of
the stored bundles other than this one that the site holds at least one approval of, signed by a key
it trusts (`approvals.approvals_issued`), the one whose federated.py differs from this one's by the
fewest lines (lines removed plus lines added, as difflib matches them), ties broken by the latest
such approval. A stored bundle without one is never a base: whoever can write the store could plant
a decoy there, but not a signed approval. A manifest names no notebook, so "the same notebook" is
the closest code; whichever base is chosen, the diff is true against a bundle this site approved.
An expired approval still counts (the site did approve that code), a revoked one does not: a
change called cosmetic against code the site took back would invite a quick re-approval of it.

federated.py is compared part by part (`parts.split_module`: the module docstring, the head before
the first cell, each federated cell by its ordinal), as unified diffs with one line of context. A
part whose bytes differ but whose syntax tree (`ast.dump`) is the same is "cosmetic": comments,
blank lines, formatting. Everything else the bundle id covers is compared too, one line each
("other"): requirements, job settings (params, rounds, min_clients, privacy, encryption, updates),
datasets and their columns, captured values, the client config, the runner, caia and Python versions.
"""

from __future__ import annotations

import ast
import difflib
import json
from dataclasses import dataclass

from ..contracts.fileset import CLIENT_CONFIG, MODULE, REQUIREMENTS, RUNNER_FILE, is_statistics
from ..researcher.bundle import Bundle, json_changes
from ..researcher.history import job_changes, keyed, value_changes
from ..site.approvals import approvals_issued, latest_revocations
from ..site.sites import Site
from .parts import split_module
from .store import approved_bundles

CONTEXT_LINES = 1  # lines of context around each change in a diff
_ORDER = {"docstring": 0, "head": 1, "cell": 2}


@dataclass(frozen=True)
class PartChange:
    """One part of federated.py: `part` "docstring", "head" or "cell" (with its `cell` ordinal, else
    None); `status` "unchanged", "changed", "cosmetic" (same syntax tree), "added" or "removed";
    `diff` the unified diff from the base's part to this one's, without file headers ("" if unchanged)."""

    part: str
    cell: int | None
    status: str
    diff: str

    @property
    def title(self) -> str:
        """"federated cell 3", "module docstring" or "before the first cell"."""
        return {"docstring": "module docstring", "head": "before the first cell"}.get(self.part, f"federated cell {self.cell}")

    def to_json(self) -> dict:
        return {"cell": self.cell, "part": self.part, "title": self.title, "status": self.status, "diff": self.diff}


@dataclass(frozen=True)
class Changes:
    """How `bundle` differs from `base`, a bundle its site approved: `cells` every part of
    federated.py (see `PartChange`), `other` one line per other change."""

    base: Bundle
    cells: tuple[PartChange, ...]
    other: tuple[str, ...]

    @property
    def changed(self) -> list[PartChange]:
        """The parts whose bytes differ."""
        return [c for c in self.cells if c.status != "unchanged"]

    @property
    def cosmetic(self) -> bool:
        """True when the bytes differ only where the syntax tree is the same: nothing in `other`, and
        every part that differs is "cosmetic". Such a bundle still needs its own approval."""
        return not self.other and bool(self.changed) and all(c.status == "cosmetic" for c in self.changed)

    def to_json(self) -> dict:
        return {"base": {"bundle_id": self.base.id, "short_id": self.base.short_id}, "cosmetic": self.cosmetic,
                "cells": [c.to_json() for c in self.cells], "other": list(self.other)}


def compare(bundle: Bundle, site: Site) -> Changes | None:
    """What changed in `bundle` (intact) since the closest bundle `site` approved before (see the
    module doc), or None when the site's store holds no other bundle the site holds a trusted
    approval of that no revocation took back, or for a statistics bundle (it holds no code)."""
    if is_statistics(bundle.manifest["job"]):
        return None  # no code to compare: its review lists what leaves each site
    candidates = [b for b in approved_bundles(site) if b.id != bundle.id and not is_statistics(b.manifest["job"])]
    ids = {b.id for b in candidates}
    revocations, issued = latest_revocations(site, ids), approvals_issued(site, ids)  # each folder read once
    stored = []
    for candidate in candidates:
        revoked = revocations.get(candidate.id)
        times = [t for t in issued.get(candidate.id, []) if revoked is None or t > revoked.covers_until]
        if times:
            stored.append((candidate, max(times).timestamp()))
    if not stored:
        return None
    source = bundle.source(MODULE)
    base = min(stored, key=lambda found: (_distance(found[0].source(MODULE), source), -found[1]))[0]
    return Changes(base, tuple(part_changes(base.source(MODULE), source)), tuple(other_changes(base, bundle)))


def part_changes(old: str, new: str) -> list[PartChange]:
    """Every part of federated.py `new` against `old` (see `PartChange`), in the module's order."""
    before, after = _parts(old), _parts(new)
    changes = []
    for key in sorted(before.keys() | after.keys(), key=lambda k: (_ORDER[k[0]], k[1] or 0)):
        a, b = before.get(key), after.get(key)
        if a == b:
            status = "unchanged"
        elif a is None or b is None:
            status = "added" if a is None else "removed"
        else:
            status = "cosmetic" if _same_tree(a, b) else "changed"
        changes.append(PartChange(key[0], key[1], status, "" if a == b else _unified(a or "", b or "")))
    return changes


def other_changes(old: Bundle, new: Bundle) -> list[str]:
    """One line per change outside federated.py from bundle `old` to `new`, e.g. "requirement added:
    numpy==2.1.0", "param lr: 0.1 -> 0.2", "dataset tiny column x3 added: number", "captured value
    scale changed (float, sha256 1a2b3c4d5e6f -> ...)", "client config ...: a -> b"."""
    old_m, new_m = old.manifest, new.manifest
    said = _requirement_changes(old, new)
    said += job_changes(old_m["job"], new_m["job"])
    said += _dataset_changes(old_m["datasets"], new_m["datasets"])
    said += _standard_changes(old_m, new_m)
    said += _captured_changes(old_m["files"], new_m["files"])
    if old_m["files"][CLIENT_CONFIG] != new_m["files"][CLIENT_CONFIG]:
        config = (json.loads(old.source(CLIENT_CONFIG)), json.loads(new.source(CLIENT_CONFIG)))
        said += [f"client config {field}: {_cut(a)} -> {_cut(b)}" for field, a, b in json_changes(*config)]
    if old_m["files"][RUNNER_FILE] != new_m["files"][RUNNER_FILE]:
        said.append("site runner changed (caia's runner of another version)")
    said += value_changes("", {"caia version": old_m["caia_version"], "python": old_m["python"]},
                          {"caia version": new_m["caia_version"], "python": new_m["python"]})
    if not said:  # whatever else the id covers: never call a change cosmetic without looking at all of it
        rest = [json.loads(json.dumps(m)) for m in (old_m, new_m)]
        for m in rest:
            m["files"].pop(MODULE, None)
        said += [f"manifest field {field}: {_cut(a)} -> {_cut(b)}" for field, a, b in json_changes(*rest)]
    return said


def _parts(source: str) -> dict[tuple[str, int | None], str]:
    """(kind, ordinal) -> text of each part. `split_module` gives each key once; were one given
    twice, its texts are joined, never one dropped: every byte is compared."""
    parts: dict[tuple[str, int | None], str] = {}
    for part in split_module(source):
        key = (part.kind, part.ordinal)
        parts[key] = parts.get(key, "") + part.text
    return parts


def _distance(old: str, new: str) -> int:
    """Lines removed plus lines added from `old` to `new`."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    return sum(i2 - i1 + j2 - j1 for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def _same_tree(old: str, new: str) -> bool:
    try:
        return ast.dump(ast.parse(old)) == ast.dump(ast.parse(new))
    except (SyntaxError, ValueError):
        return False


def _unified(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), n=CONTEXT_LINES, lineterm="")
    return "\n".join(line for line in lines if not line.startswith(("---", "+++")))


def _requirement_changes(old: Bundle, new: Bundle) -> list[str]:
    before, after = (set(filter(None, map(str.strip, b.source(REQUIREMENTS).splitlines()))) for b in (old, new))
    return ([f"requirement added: {line}" for line in sorted(after - before)]
            + [f"requirement removed: {line}" for line in sorted(before - after)])


def _dataset_changes(old: dict, new: dict) -> list[str]:
    said = keyed("dataset", dict.fromkeys(old), dict.fromkeys(new), "")  # added, removed
    for name in sorted(old.keys() & new.keys()):
        before = {c["name"]: c["kind"] for c in old[name]["columns"]}
        after = {c["name"]: c["kind"] for c in new[name]["columns"]}
        columns = value_changes(f"dataset {name} column ", before, after)
        if not columns and list(before) != list(after):
            columns = [f"dataset {name}: columns reordered ({', '.join(after)})"]
        said += columns
    return said


def _standard_changes(old: dict, new: dict) -> list[str]:
    """"dataset tiny standard changed (sha256 ... -> ...)", added or removed, for datasets both manifests request."""
    def standard(manifest: dict, name: str) -> str | None:
        path = manifest["datasets"][name].get("standard")
        return manifest["files"][path]["sha256"] if path in manifest["files"] else None

    said = []
    for name in sorted(old["datasets"].keys() & new["datasets"].keys()):
        a, b = standard(old, name), standard(new, name)
        if a != b:
            said.append(f"dataset {name} standard added" if a is None else f"dataset {name} standard removed" if b is None
                        else f"dataset {name} standard changed (sha256 {a[:12]} -> {b[:12]})")
    return said


def _captured_changes(old: dict, new: dict) -> list[str]:
    def captured(files: dict) -> dict:
        return {e.get("python_name") or path: e for path, e in files.items() if e["role"] == "captured"}

    before, after = captured(old), captured(new)
    said = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None:
            said.append(f"captured value {name} added ({b.get('python_type')})")
        elif b is None:
            said.append(f"captured value {name} removed (was {a.get('python_type')})")
        elif a != b:
            kind = a.get("python_type") if a.get("python_type") == b.get("python_type") else \
                f"{a.get('python_type')} -> {b.get('python_type')}"
            said.append(f"captured value {name} changed ({kind}, sha256 {a['sha256'][:12]} -> {b['sha256'][:12]})")
    return said


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
