"""The POC and production targets: submit through NVFLARE's Flare API and follow the job.

`submit()` builds the job and submits it with the researcher's admin startup kit, then starts
`python -m caia_jupyter.targets.remote RUN_DIR` in its own process group. That follower keeps the
run directory as current as the simulator's launcher does, from the server side only:

- job status and per-site deployment results (a site's refusal is in NVFLARE's deploy detail),
- live metrics and progress, pulled with the `caia` app command the server's receiver registers
  (it fails until the job's server process is up and while it winds down; those are skipped),
- at the end, the job's result (global model, every metric record, status) downloaded.

A statistics run (run.json "statistics") has no metrics to pull: at the end, the statistics NVFLARE's
StatisticsController wrote into the server's job folder (STATISTICS_FILE) are taken from the
downloaded result, where `researcher.explore.Result.read` finds them.

What the server says about a site's failure is read as untrusted: only reports of the closed
vocabulary of caia_jupyter.contracts.failures, for the run's own sites, are kept; so is what it says
about data a site admitted breaking the bundle's standard (`contracts.standard.reports`).

Terminating the follower (Run.abort) aborts the job on the server first.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from ..aggregator.components import APP_COMMAND, FAILURES, GLOBAL_MODEL, METRICS, STANDARDS, STATISTICS_FILE, STATUS
from ..contracts import failures, standard
from ..contracts.errors import FlareError
from ..contracts.fsutil import read_json, write_json
from ..contracts.weights import DTYPES_FILE
from ..researcher.runs import (Run, Status, describe_failures, ended_message, finished_message, refused_message,
                               start_launcher)
from ..site.guard import MISCONFIGURED
from .poc import admin_session

# How long a deployed job waits for a site that stopped answering before going on without it.
SERVER_CONFIG = {"dead_client_grace_period": 10, "dead_client_check_lead_time": 10}
ROUND_TIMEOUT = 600  # seconds; a round never waits longer for a site that hangs
POLL = 0.5
_DEPLOY = re.compile(r"^(?P<site>[^:]+): (?P<detail>.*)$")
# A site's refusal as caia's guard words it (guard.Refusal), after NVFLARE's "NVFLARE_ERROR: ".
_CAIA_REFUSAL = re.compile(r"NVFLARE_ERROR: (?P<site>[^ ]+) (?:refused bundle sha256:[0-9a-f]{64}|refused the job): (?P<why>.+)")
# Text that looks like a path outside the app: absolute, home-relative, Windows, a URL.
_OUTSIDE_PATH = re.compile(r"""(?:^|[\s'"(\[{<=,;:])[/~]|\\|[A-Za-z]:/|://""")
MAX_REASON_CHARS = 2000


def submit(bundle, sites: list[str], runs_root: Path, target: str, admin_kit: Path, username: str,
           round_timeout: int = ROUND_TIMEOUT) -> Run:
    run_dir = create_run(bundle, sites, runs_root, target, admin_kit, username)
    try:
        prepare(run_dir, bundle, round_timeout)
        return start(run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-made stays behind
        raise


def create_run(bundle, sites: list[str], runs_root: Path, target: str, admin_kit: Path, username: str) -> Path:
    from .simulator import create_run as create

    run_dir = create(bundle, {name: "" for name in sites}, runs_root)
    spec = json.loads((run_dir / "run.json").read_text())
    spec.update(target=target, admin_kit=str(Path(admin_kit).resolve()), username=username)
    write_json(run_dir / "run.json", spec)
    return run_dir


def prepare(run_dir: Path, bundle, round_timeout: int = ROUND_TIMEOUT) -> Path:
    from .job import build_job

    spec = json.loads((run_dir / "run.json").read_text())
    return build_job(bundle, spec["sites"], run_dir / "job", name=f"caia-{bundle.short_id}",
                     round_timeout=round_timeout, server_config=SERVER_CONFIG)


def start(run_dir: Path) -> Run:
    """Submit RUN_DIR/job with the run's admin kit, then start the follower."""
    spec = json.loads((run_dir / "run.json").read_text())
    with admin_session(Path(spec["admin_kit"]), spec["username"]) as session:
        try:
            spec["job_id"] = session.submit_job(str(run_dir / "job"))
        except Exception as e:  # AuthorizationError, InvalidJobDefinition...
            raise FlareError(f"NVFLARE refused the job submission: {e}") from e
    write_json(run_dir / "run.json", spec)
    return start_launcher(run_dir, "caia_jupyter.targets.remote")


def follow(run_dir: Path) -> int:
    """The follower process: mirror the remote job into the run directory until it ends."""
    spec = json.loads((run_dir / "run.json").read_text())
    job_id, stop = spec["job_id"], {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    metrics_file = run_dir / METRICS
    count = sum(1 for _ in open(metrics_file)) if metrics_file.exists() else 0
    try:
        with admin_session(Path(spec["admin_kit"]), spec["username"]) as session:
            aborted = False
            while True:
                if stop["asked"] and not aborted:
                    session.abort_job(job_id)
                    aborted = True
                meta = session.get_job_meta(job_id)
                write_json(run_dir / "sites.json", admissions(meta, spec["sites"]))
                if str(meta.get("status", "")).startswith("FINISHED"):
                    break
                if meta.get("status") == "RUNNING" and not spec.get("statistics"):
                    count += pull(session, job_id, count, run_dir, spec["sites"])
                time.sleep(POLL)
            result = Path(session.download_job_result(job_id, destination=str(run_dir / "result")))
        collect(result, run_dir, spec["sites"], statistics=bool(spec.get("statistics")))
        write_json(run_dir / "outcome.json", outcome(meta, run_dir, spec, aborted))
    except Exception as e:  # the server went away, the kit stopped working...
        traceback.print_exc()
        message = f"lost the NVFLARE job {job_id} ({type(e).__name__}); see {run_dir / 'launcher.log'}"
        write_json(run_dir / "outcome.json", {"status": "failed", "message": message})
        return 1
    return 0


def pull(session, job_id: str, since: int, run_dir: Path, sites: list[str]) -> int:
    """Append the records the server received since the `since`-th; returns how many arrived."""
    try:
        answer = session.do_app_command(job_id, APP_COMMAND, {"since": since})
    except Exception:  # JobNotRunning, NoReply, InternalError: the job's server is starting or ending
        return 0
    records = answer.get("records", []) if isinstance(answer, dict) else []
    if records:
        with open(run_dir / METRICS, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if isinstance(answer, dict) and answer.get("status"):
        write_json(run_dir / STATUS, answer["status"])
    if isinstance(answer, dict) and answer.get("failures"):
        write_failures(answer["failures"], run_dir, sites)
    if isinstance(answer, dict) and answer.get("standards"):
        write_standards(answer["standards"], run_dir, sites)
    return len(records)


def write_failures(received, run_dir: Path, sites: list[str]) -> dict[str, failures.Report]:
    """Keep the server's failure reports of the run's own sites, each parsed strictly."""
    reports = failures.parse_all(received, sites)
    write_json(run_dir / FAILURES, {site: report.model_dump() for site, report in reports.items()})
    return reports


def write_standards(received, run_dir: Path, sites: list[str]) -> dict[str, list[standard.Report]]:
    """Keep the server's reports of data breaking the bundle's standard: of the run's own sites, each
    parsed strictly and naming only rules of the bundle's own standards (run.json "standards")."""
    reports = standard.reports(received, sites, read_json(run_dir / "run.json").get("standards"))
    write_json(run_dir / STANDARDS, {site: [r.model_dump() for r in found] for site, found in reports.items()})
    return reports


def admissions(meta: dict, sites: list[str]) -> dict:
    """Each site's deployment, from NVFLARE's deploy detail ("site-2: NVFLARE_ERROR: <why>"):
    site -> {"state": "approved"} or {"state": "refused", "reason": text the researcher may see}.

    The detail is the site's text, whatever failed there. A reason is passed on only when it is a
    refusal of caia's guard worded for that very site (`<site> refused bundle sha256:<hex>: <why>`,
    `<site> refused the job: <why>`, or the guard's MISCONFIGURED text), on one line, short, naming
    no path outside the app; anything else (an exception while NVFLARE deployed, which may name the
    site's folders) becomes "<site> could not deploy the job (NVFLARE's reason is kept at the site)".
    """
    found = {}
    for line in meta.get("job_deploy_detail", []) or []:
        match = _DEPLOY.match(str(line))
        if not match or match["site"] not in sites:
            continue
        site, detail = match["site"], match["detail"].strip()
        if detail == "OK":
            found[site] = {"state": "approved"}
            continue
        refusal = _CAIA_REFUSAL.fullmatch(detail)
        if detail == f"NVFLARE_ERROR: {MISCONFIGURED}":
            reason = f"{site} refused the job: {MISCONFIGURED}"
        elif (refusal and refusal["site"] == site and len(detail) <= MAX_REASON_CHARS and detail.isprintable()
              and not _OUTSIDE_PATH.search(refusal["why"])):
            reason = detail.removeprefix("NVFLARE_ERROR: ")
        else:
            reason = f"{site} could not deploy the job (NVFLARE's reason is kept at the site)"
        found[site] = {"state": "refused", "reason": reason}
    return found


def collect(result: Path, run_dir: Path, sites: list[str], statistics: bool = False) -> None:
    """Take the server's own records (authoritative, complete) from the downloaded job result; of a
    statistics run, the statistics NVFLARE's writer left in the server's job folder."""
    for name in (STATISTICS_FILE,) if statistics else (METRICS, STATUS, GLOBAL_MODEL, DTYPES_FILE):
        found = next(result.rglob(name), None)
        if found is not None:
            (run_dir / name).write_bytes(found.read_bytes())
    found = next(result.rglob(FAILURES), None)
    if found is not None:
        write_failures(read_json(found), run_dir, sites)
    found = next(result.rglob(STANDARDS), None)
    if found is not None:
        write_standards(read_json(found), run_dir, sites)


def outcome(meta: dict, run_dir: Path, spec: dict, aborted: bool) -> dict:
    job_status = str(meta.get("status"))
    if spec.get("statistics"):
        return statistics_outcome(meta, run_dir, spec, aborted)
    status = Status.parse(read_json(run_dir / STATUS), spec["sites"])
    admitted = [s for s, a in admissions(meta, spec["sites"]).items() if a["state"] == "approved"]
    failed = failures.parse_all(read_json(run_dir / FAILURES), spec["sites"])
    base = {"job_id": spec["job_id"], "job_status": job_status,
            "failed_sites": {site: report.model_dump() for site, report in failed.items()},
            "completed_sites": list(status.sites) if status.phase == "finished" else []}
    if aborted or job_status == "FINISHED:ABORTED":
        return {**base, "status": "aborted", "message": f"aborted (NVFLARE job {spec['job_id']})"}
    if job_status == "FINISHED:FAILED_TO_RUN" and len(admitted) < len(spec["sites"]):
        return {**base, "status": "refused", "message": refused_message(admitted, spec["sites"], spec["min_clients"])}
    reasons = describe_failures(failed)
    if job_status == "FINISHED:COMPLETED" and status.phase == "finished":
        return {**base, "status": "finished", "message": finished_message(status, spec["sites"], spec["min_clients"], reasons)}
    reason = ended_message(status, reasons) or f"NVFLARE ended the job as {job_status}"
    return {**base, "status": "failed", "message": f"{reason} (NVFLARE job {spec['job_id']}, {job_status})"}


def statistics_outcome(meta: dict, run_dir: Path, spec: dict, aborted: bool) -> dict:
    """How a statistics run ended: finished when NVFLARE completed the job and its statistics were collected."""
    job_status = str(meta.get("status"))
    admitted = [s for s, a in admissions(meta, spec["sites"]).items() if a["state"] == "approved"]
    base = {"job_id": spec["job_id"], "job_status": job_status, "failed_sites": {}, "completed_sites": []}
    if aborted or job_status == "FINISHED:ABORTED":
        return {**base, "status": "aborted", "message": f"aborted (NVFLARE job {spec['job_id']})"}
    if job_status == "FINISHED:FAILED_TO_RUN" and len(admitted) < len(spec["sites"]):
        return {**base, "status": "refused", "message": refused_message(admitted, spec["sites"], spec["min_clients"])}
    if job_status == "FINISHED:COMPLETED" and (run_dir / STATISTICS_FILE).is_file():
        return {**base, "completed_sites": admitted, "status": "finished",
                "message": f"statistics from {', '.join(admitted)}"}
    return {**base, "status": "failed", "message": f"NVFLARE's statistics workflow ended without a result "
                                                   f"(NVFLARE job {spec['job_id']}, {job_status})"}


if __name__ == "__main__":
    sys.exit(follow(Path(sys.argv[1]).resolve()))
