"""What the JupyterLab panel shows for a saved notebook, and for a run, from the core alone."""

from __future__ import annotations

from pathlib import Path

from .contracts.errors import CaiaError
from .researcher import compose
from .researcher.bundle import Bundle
from .researcher.runs import Run, tones
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
    finite float or None: missing), with its notes (`Run.notes`: updates left out, metrics missing),
    its bundle id, `headline` (`Run.headline`), `tones` per site (`Run.tones`), `global`: every round's
    [round, name, value] so far (`Run.global_metrics`), and `final_round` (`Run.final_round`)."""
    handle = run if isinstance(run, Run) else Run(run)
    records = [[r.site, r.round, r.name, r.value] for r in handle.records()[since:]]
    done, total = handle.progress
    sites = handle.sites
    return {"status": handle.status, "message": handle.message, "rounds_done": done, "rounds": total,
            "sites": sites, "reasons": {**handle.refusals, **handle.failures}, "notes": handle.notes,
            **identity(handle), "headline": handle.headline, "tones": tones(sites),
            "global": [list(row) for row in handle.global_metrics()], "final_round": handle.final_round,
            "since": since, "records": records, "count": since + len(records)}


def identity(handle: Run) -> dict:
    """{"bundle_id", "short_id"} of the bundle a run ran (the short id: its first 12 hex digits)."""
    bundle_id = handle.spec.get("bundle_id")
    bundle_id = bundle_id if isinstance(bundle_id, str) else ""
    return {"bundle_id": bundle_id, "short_id": bundle_id.removeprefix("sha256:")[:12]}


UNREADABLE = "not a run caia can read: its run.json is not one caia wrote"


def runs(runs_dir: Path) -> list[dict]:
    """Every run in `runs_dir` (a notebook's runs/), newest first, each as the runs list shows it:

        run         its folder, as given under `runs_dir`
        bundle_id, short_id, target ("simulator" | "poc" | "prod"), started_at (ISO 8601 UTC)
        duration_s  seconds from start to outcome, None while it is live
        status      `Run.status`, or "unreadable" for a folder whose run.json caia cannot read
        headline    `Run.headline` (for an unreadable one: why)
        final       {metric: {site: value}}: each site's evaluation of the final global model
        global      {metric: value}: their num_samples-weighted mean (`Run.final_metrics`)

    A folder without run.json (not a run) is left out; a missing `runs_dir` lists nothing."""
    folders = sorted((p for p in Path(runs_dir).iterdir() if (p / "run.json").is_file()), reverse=True) \
        if Path(runs_dir).is_dir() else []
    listed = [run_entry(folder) for folder in folders]
    return sorted(listed, key=lambda entry: entry["started_at"] or "", reverse=True)  # stable: by name within a second


def run_entry(folder: Path) -> dict:
    """One row of `runs`: never raises for what a run folder holds."""
    try:
        handle = Run(folder)
        final = handle.final_metrics()
        overall = final.pop("global", {})
        per_metric: dict[str, dict[str, float | None]] = {}
        for site, values in final.items():
            for name, value in values.items():
                per_metric.setdefault(name, {})[site] = value
        return {"run": str(folder), **identity(handle), "target": str(handle.spec.get("target", "")),
                "started_at": handle.started_at, "duration_s": handle.duration_s, "status": handle.status,
                "headline": handle.headline, "final": per_metric, "global": overall}
    except (CaiaError, KeyError, TypeError, ValueError, AttributeError):  # a run.json caia did not write, or altered
        return {"run": str(folder), "bundle_id": "", "short_id": "", "target": "", "started_at": None,
                "duration_s": None, "status": "unreadable", "headline": UNREADABLE, "final": {}, "global": {}}
