"""What the JupyterLab panel shows for a saved notebook, and for a run, from the core alone."""

from __future__ import annotations

from pathlib import Path

from .contracts.errors import CaiaError
from .researcher import compose
from .researcher.bundle import Bundle
from .researcher.runs import Run
from .site.approvals import find_approval
from .site.sites import open_site


def site_dirs_near(notebook_path: Path, extra: list[str] = ()) -> list[Path]:
    """Site directories for a notebook: `sites/*` beside it, then any configured ones."""
    found = sorted(p.parent for p in (notebook_path.parent / "sites").glob("*/site.json"))
    return found + [Path(d) for d in extra if Path(d) not in found]


def notebook(notebook_path: Path, site_dirs: list[Path]) -> dict:
    """Federated cells, bundle id (as `caia bundle` computes it), validation and approvals per site."""
    composed = compose.compose(notebook_path)
    built = compose.default_output(notebook_path)
    record = Bundle(built, composed.id, composed.manifest).record("validation.json") or {}
    if record.get("bundle_id") != composed.id:
        validation = {"state": "none", "summary": "not validated for this bundle id"}
    elif record.get("passed") is True:
        validation = {"state": "passed", "summary": f"passed in {record.get('duration_s')} s", "at": record.get("started_at")}
    else:
        error = record.get("error")
        validation = {"state": "failed", "summary": str(error.get("summary", "failed")) if isinstance(error, dict) else "failed"}
    sites = []
    for directory in site_dirs:
        try:
            site = open_site(directory)
            approval, reasons = find_approval(site, composed.id, set(composed.manifest["datasets"]))
        except CaiaError as e:
            sites.append({"name": Path(directory).name, "path": str(directory), "approval": "error", "detail": str(e)})
            continue
        sites.append({"name": site.name, "path": str(site.path),
                      "approval": "approved" if approval else ("rejected" if reasons else "none"),
                      "detail": ", ".join(f"{k}={v}" for k, v in approval.datasets.items()) if approval
                      else (reasons[0] if reasons else "no approval of this bundle id")})
    return {
        "bundle_id": composed.id,
        "cells": [{"ordinal": c.ordinal, "index": c.index, "first_line": c.first_line} for c in composed.notebook.cells],
        "job": composed.manifest["job"],
        "datasets": sorted(composed.manifest["datasets"]),
        "validation": validation,
        "sites": sites,
    }


def run(run: Run | Path, since: int = 0) -> dict:
    """A run's state and its metric records from the `since`-th on ([site, round, name, value], value a
    finite float or None: missing), with its notes (`Run.notes`: updates left out, metrics missing)."""
    handle = run if isinstance(run, Run) else Run(run)
    records = [[r.site, r.round, r.name, r.value] for r in handle.records()[since:]]
    done, total = handle.progress
    return {"status": handle.status, "message": handle.message, "rounds_done": done, "rounds": total,
            "sites": handle.sites, "reasons": {**handle.refusals, **handle.failures}, "notes": handle.notes,
            "since": since, "records": records, "count": since + len(records)}
