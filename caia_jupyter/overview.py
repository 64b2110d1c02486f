"""What the JupyterLab panel shows for a saved notebook, and for a run, from the core alone."""

from __future__ import annotations

from pathlib import Path

from .contracts.errors import CaiaError, NotebookError
from .contracts.fsutil import read_json
from .researcher import compose, history
from .researcher.bundle import Bundle
from .researcher.runs import Run, tones
from .researcher.validation import record_of
from .site.approvals import find_approval
from .site.sites import Site
from .targets.submit import approve_command, check_ready, live_runs, open_site_shown, shown

RUNS = "runs"  # beside the notebook, where the panel's Submit writes runs
MAX_EARLIER = 50  # earlier versions looked through for a site's approval, newest first


def site_dirs_near(notebook_path: Path, extra: list[str] = ()) -> list[Path]:
    """Site directories for a notebook: `sites/*` beside it, then any configured ones."""
    found = sorted(p.parent for p in (notebook_path.parent / "sites").glob("*/site.json"))
    return found + [Path(d) for d in extra if Path(d) not in found]


def notebook(notebook_path: Path, site_dirs: list[Path], root: Path | None = None) -> dict:
    """What the panel shows for the saved notebook (the JSON of GET /caia/api/notebook): its federated
    cells, bundle id (as `caia bundle` computes it; "short_id" its first 12 hex digits) and the bundle
    folder Submit builds; the validation of exactly that id ("cell"/"line": the failing federated cell's
    notebook index, 0-based, and line as the editor numbers it, the %%federated line being 1); per site
    its approval ("approved", "older": it approved an earlier version, "none", "rejected", "error") and
    the `caia approve` command its reviewer runs; "changes" since the newest earlier version a site
    approved; "submit" {ready, reason}: the verdict Submit gives (`targets.submit.check_ready`); and
    "live_run", a live run of this id. Paths are relative to `root` (default: the current directory)
    when under it. Raises NotebookError for a notebook that cannot be bundled."""
    composed = compose.compose(notebook_path)
    bundle = Bundle(compose.default_output(notebook_path), composed.id, composed.manifest)
    earlier = [b for b in history.builds(bundle.path) if b["bundle_id"] != composed.id][:MAX_EARLIER]
    sites, older = [], []
    for directory in site_dirs:
        try:
            site = open_site_shown(directory, root)
            entry, approved_older = site_approval(site, bundle, earlier, root)
        except CaiaError as e:
            sites.append({"name": Path(directory).name, "path": shown(directory, root), "approval": "error",
                          "detail": str(e), "approve_command": ""})
            continue
        sites.append(entry)
        older += approved_older
    runs_root = Path(notebook_path).parent / RUNS
    try:
        check_ready(bundle, runs_root, "simulator", site_dirs, notebook=Path(notebook_path), relative_to=root)
        ready = {"ready": True, "reason": ""}
    except CaiaError as e:
        ready = {"ready": False, "reason": str(e)}
    newest = next((b for b in earlier if b["bundle_id"] in older), None)
    live = live_runs(runs_root, composed.id)
    return {
        "bundle_id": composed.id,
        "short_id": bundle.short_id,
        "bundle_path": shown(bundle.path, root),
        "cells": [{"ordinal": c.ordinal, "index": c.index, "first_line": c.first_line} for c in composed.notebook.cells],
        "job": composed.manifest["job"],
        "datasets": sorted(composed.manifest["datasets"]),
        "validation": validation_state(record_of(bundle) or {}),
        "changes": newest and {"approved_id": newest["bundle_id"], "short_id": newest["bundle_id"].removeprefix("sha256:")[:12],
                               "summary": history.changes(newest, composed.build_record)},
        "sites": sites,
        "submit": ready,
        "live_run": shown(live[0], root) if live else None,
    }


def site_approval(site: Site, bundle: Bundle, earlier: list[dict], root: Path | None) -> tuple[dict, list[str]]:
    """The panel's entry for `site` and `bundle` (see `notebook`), and the ids of `earlier` (build records,
    newest first) the site approved when it has not approved `bundle`: only the newest is looked for."""
    approval, reasons = find_approval(site, bundle.id, set(bundle.manifest["datasets"]))
    entry = {"name": site.name, "path": shown(site.path, root), "approve_command": approve_command(bundle, site, root)}
    if approval:
        return {**entry, "approval": "approved", "detail": ", ".join(f"{k}={v}" for k, v in approval.datasets.items())}, []
    if reasons:
        return {**entry, "approval": "rejected", "detail": reasons[0]}, []
    for build in earlier:
        if find_approval(site, build["bundle_id"], set(build["manifest"].get("datasets", {})))[0]:
            short = build["bundle_id"].removeprefix("sha256:")[:12]
            return {**entry, "approval": "older", "detail": f"approved an older version, bundle {short}; "
                    "its reviewer approves this one with the command below"}, [build["bundle_id"]]
    return {**entry, "approval": "none", "detail": "no approval of this bundle id"}, []


def validation_state(record: dict) -> dict:
    """The panel's "validation" for a validation record of the current id ({} for none)."""
    if not record:
        return {"state": "none", "summary": "not validated for this bundle id", "cell": None, "line": None}
    if record.get("passed") is True:
        return {"state": "passed", "summary": f"passed in {record.get('duration_s')} s", "at": record.get("started_at"),
                "cell": None, "line": None}
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    cell, line = error.get("notebook_cell"), error.get("cell_line")
    return {"state": "failed", "summary": str(error.get("summary", "failed")),
            "cell": cell - 1 if isinstance(cell, int) and cell >= 1 else None,
            "line": line if isinstance(line, int) and line >= 1 else None}


def run(run: Run | Path, since: int = 0) -> dict:
    """A run's state and its metric records from the `since`-th on ([site, round, name, value], value a
    finite float or None: missing), with its notes (`Run.notes`: data admitted breaking its standard,
    updates left out, metrics missing), its bundle id, `headline` (`Run.headline`), `tones` per site
    (`Run.tones`), `global`: every round's [round, name, value] so far (`Run.global_metrics`), and
    `final_round` (`Run.final_round`)."""
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
    return {"bundle_id": handle.bundle_id, "short_id": handle.bundle_id.removeprefix("sha256:")[:12]}


UNREADABLE = "not a run caia can read: its run.json is not one caia wrote"


def runs(runs_dir: Path, bundle: Path | None = None) -> list[dict]:
    """Every run in `runs_dir` (a notebook's runs/), newest first, or with `bundle` (a bundle folder:
    a notebook's `compose.default_output`) without the runs whose run.json names another bundle folder
    (another notebook's runs beside it). Each as the runs list shows it:

        run         its folder, as given under `runs_dir`
        bundle_id, short_id, target ("simulator" | "poc" | "prod", "" if unknown), started_at
                    (ISO 8601 UTC, `Run.started_at`; None if unknown)
        duration_s  seconds from start to outcome, None while it is live
        status      `Run.status`, or "unreadable" for a folder whose run.json caia cannot read
        headline    `Run.headline` (for an unreadable one: why)
        final       {metric: {site: value}}: each site's evaluation of the final global model
        global      {metric: value}: their num_samples-weighted mean (`Run.final_metrics`)

    A folder without run.json (not a run) is left out; a missing `runs_dir` lists nothing."""
    folders = sorted((p for p in Path(runs_dir).iterdir() if (p / "run.json").is_file()), reverse=True) \
        if Path(runs_dir).is_dir() else []
    if bundle is not None:
        mine = str(Path(bundle).resolve())
        folders = [folder for folder in folders if _bundle_folder_of(folder) in (mine, None)]
    listed = [run_entry(folder) for folder in folders]
    return sorted(listed, key=lambda entry: entry["started_at"] or "", reverse=True)  # stable: by name within a second


def _bundle_folder_of(run_folder: Path) -> str | None:
    """The bundle folder a run's run.json names, None when it names none (or cannot be read)."""
    named = read_json(run_folder / "run.json").get("bundle")
    return named if isinstance(named, str) else None


def run_entry(folder: Path) -> dict:
    """One row of `runs`: never raises for what a run folder holds."""
    try:
        handle = Run(folder)
        final = handle.final_metrics()
        per_metric: dict[str, dict[str, float | None]] = {}
        for site, values in final["sites"].items():
            for name, value in values.items():
                per_metric.setdefault(name, {})[site] = value
        return {"run": str(folder), **identity(handle), "target": handle.target,
                "started_at": handle.started_at, "duration_s": handle.duration_s, "status": handle.status,
                "headline": handle.headline, "final": per_metric, "global": final["global"]}
    except (CaiaError, KeyError, TypeError, ValueError, AttributeError):  # a run.json caia did not write, or altered
        return {"run": str(folder), "bundle_id": "", "short_id": "", "target": "", "started_at": None,
                "duration_s": None, "status": "unreadable", "headline": UNREADABLE, "final": {}, "global": {}}


def exploration(notebook_path: Path, root: Path) -> dict:
    """The last finished exploration of a notebook (the JSON of GET /caia/api/explore): the newest run
    in runs/ beside it of its statistics bundle (`explore.default_output`) that holds a readable result,
    as {"run": its folder relative to `root`, **`Result.to_json()`}, or {"exploration": None}.

    Run folders are untrusted: one whose run.json names another bundle folder or id, whose bundle was
    rebuilt since (its manifest is no longer that id's), that leads outside `root`, or whose files do not
    read as a result is left out. Raises NotebookError when `notebook_path` is no notebook file."""
    import json
    import os

    from .contracts.manifest import bundle_id
    from .researcher.explore import Result, default_output

    if notebook_path.suffix != ".ipynb" or not notebook_path.is_file():
        raise NotebookError(f"{notebook_path.name} is not a notebook file; pass the path of a saved .ipynb")
    runs_dir, mine = notebook_path.parent / RUNS, default_output(notebook_path).resolve()
    folders = sorted((p for p in runs_dir.iterdir() if (p / "run.json").is_file()), reverse=True) if runs_dir.is_dir() else []
    for folder in folders:  # named by their start time: newest first
        real = Path(os.path.realpath(folder))
        spec = read_json(folder / "run.json")
        if not real.is_relative_to(root) or spec.get("statistics") is not True or spec.get("bundle") != str(mine):
            continue
        try:
            if bundle_id(read_json(mine / "manifest.json")) != spec.get("bundle_id"):
                continue  # rebuilt since: its spec would misread this run's numbers
            result = Result.read(real).to_json()
            json.dumps(result, allow_nan=False)  # NaN or infinity is no JSON the panel can read
        except Exception:  # noqa: BLE001 - whatever a crafted run folder holds, it is left out, never a 500
            continue
        return {"run": real.relative_to(root).as_posix(), **result}
    return {"exploration": None}
