"""The simulator target: every site on this machine, in NVFLARE's own simulator.

`submit()` writes a run directory with the NVFLARE job in it (here, so a broken `build_model()`
is reported at once), then starts `python -m caia_jupyter.targets.simulator RUN_DIR` in its own
process group, so a notebook kernel stays free (and can restart) while it runs. That launcher
never imports torch; it checks the NVFLARE internals it relies on (`nvflare_internals`), then
runs NVFLARE's `SimulatorRunner` with one addition: right after the simulator deploys each site's
app folder, and before any of its code runs, the caia guard checks that folder against the site's
own directory (the simulator itself never calls an app validator) and installs the site's privacy
policy in the simulated site's workspace, which each worker applies (`tuning.apply_site_scope`).
Refused sites are left out; too few left means no run at all.
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING

from ..contracts import failures, standard
from ..contracts.errors import CaiaError
from ..contracts.fileset import is_statistics
from ..contracts.fsutil import read_json, write_json
from ..researcher.runs import (Run, Status, describe_failures, ended_message, finished_message, local_failure_record,
                               mark_preparing, refused_message, start_launcher)
from ..researcher.wording import plural
from . import nvflare_internals, tuning

if TYPE_CHECKING:  # the launcher never imports the bundle builder (nbformat, jsonschema: ~1 s)
    from ..researcher.bundle import Bundle


def submit(bundle: Bundle, site_dirs: dict[str, Path], runs_root: Path) -> Run:
    """Run `bundle` at `site_dirs` on the simulator; returns at once with the run's handle.
    Raises FlareError, one line, for a bundle asking for encryption (NVFLARE's simulator provisions
    no HE contexts)."""
    if bundle.manifest["job"].get("encryption"):
        raise CaiaError(f"bundle {bundle.short_id} asks for encrypted aggregation (encryption=he), which NVFLARE's "
                         "simulator does not provision HE contexts for; run it on a POC: `caia poc up --he`, then "
                         "`caia submit --target poc`")
    run_dir = create_run(bundle, site_dirs, runs_root)
    try:
        prepare(run_dir)
        return start(run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-made stays behind
        raise


def create_run(bundle: Bundle, site_dirs: dict[str, Path], runs_root: Path) -> Path:
    """A new run folder under `runs_root` for `bundle` at `site_dirs` (name -> directory): run.json, and
    the mark that this process prepares it (`runs.mark_preparing`) until `start` starts its launcher.
    Raises BundleError, writing nothing, when a standard of the bundle is not the file its manifest lists."""
    # what a site may report its data breaks (`Run.standard_reports`): dataset -> field -> rules
    standards = {name: standard.rules_of(std) for name, std in standard.bundle_standards(bundle.manifest, bundle.file).items()}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    runs_root = Path(runs_root).resolve()
    run_dir = runs_root / f"{stamp}-{bundle.short_id}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_root / f"{stamp}-{bundle.short_id}-{suffix}"
    run_dir.mkdir(parents=True)
    mark_preparing(run_dir)  # before run.json: from its first moment the run reads as starting, and live
    job = bundle.manifest["job"]
    write_json(run_dir / "run.json", {
        "target": "simulator", "bundle_id": bundle.id, "bundle": str(bundle.path.resolve()),
        "sites": {name: str(Path(d).resolve()) for name, d in site_dirs.items()},
        "rounds": job["rounds"], "min_clients": job["min_clients"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"privacy": job["privacy"]} if job.get("privacy") else {}),  # the guarantee the run's record states
        **({"statistics": True} if is_statistics(job) else {}),
        "standards": standards,
    })
    return run_dir


def prepare(run_dir: Path) -> Path:
    """Build the NVFLARE job of a run into RUN_DIR/job."""
    from ..researcher import bundle as bundles
    from .job import build_job

    spec = json.loads((run_dir / "run.json").read_text())
    bundle = bundles.require_intact(spec["bundle"], spec["bundle_id"])
    return build_job(bundle, list(spec["sites"]), run_dir / "job", name=f"caia-{bundle.short_id}",
                     output_dir=str(run_dir), server_config=tuning.SERVER_CONFIG)


def start(run_dir: Path) -> Run:
    """Start the launcher for a run directory, in its own process group."""
    return start_launcher(run_dir, "caia_jupyter.targets.simulator")


def launch(run_dir: Path) -> int:
    """The launcher process: run the guarded simulator on RUN_DIR/job, record the outcome."""
    from nvflare.fuel.common.exit_codes import ProcessExitCode
    from nvflare.fuel.f3.mpm import MainProcessMonitor
    from nvflare.private.fed.app.simulator import simulator_runner
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner
    from nvflare.private.fed.utils.fed_utils import get_simulator_app_root

    from ..site.guard import Refusal, admit
    from ..site.privacy_policy import PRIVACY_FILE

    spec = json.loads((run_dir / "run.json").read_text())
    sites, min_clients = spec["sites"], spec["min_clients"]

    class GuardedSimulatorRunner(SimulatorRunner):
        def _deploy_apps(self, job_name, data_bytes, meta, log_config_file_path):
            super()._deploy_apps(job_name, data_bytes, meta, log_config_file_path)
            admissions = {}
            for site in list(self.client_names):
                try:
                    local = Path(self.simulator_root) / site / "local"  # the simulated site's NVFLARE workspace
                    release = admit(get_simulator_app_root(self.simulator_root, site), sites[site], sandbox="preferred",
                                    privacy_file=local / PRIVACY_FILE)
                    admissions[site] = {"state": "approved", "datasets": sorted(release.datasets), "sandbox": release.sandbox}
                except Refusal as e:
                    admissions[site] = {"state": "refused", "reason": str(e)}
            write_json(run_dir / "sites.json", admissions)
            self.client_names = [s for s in self.client_names if admissions[s]["state"] == "approved"]
            self.args.threads = max(len(self.client_names), 1)  # one long-lived worker per site, no respawns
            if len(self.client_names) < min_clients:
                raise RuntimeError(f"only {len(self.client_names)} of {plural(len(sites), 'site')} admitted the bundle")

        def setup(self):
            tuning.fork_workers(simulator_runner)
            ready = super().setup()
            if ready:
                self.server.check_engine_frequency = tuning.STEP  # NVFLARE polls the server's state every 3 s
            return ready

        def run_process(self, return_dict):  # as NVFLARE's, without its 3 s shutdown grace
            try:
                status = MainProcessMonitor.run(main_func=self.simulator_run_main, run_dir=self.workspace,
                                                shutdown_grace_time=0, cleanup_grace_time=6)
            except Exception:
                traceback.print_exc()
                status = ProcessExitCode.EXCEPTION
            return_dict["run_status"] = status

    try:
        nvflare_internals.check()  # before anything of NVFLARE is changed or relied on
        tuning.tune_launcher()
        runner = GuardedSimulatorRunner(job_folder=str(run_dir / "job"), workspace=str(run_dir / "workspace"),
                                        clients=",".join(sites), threads=len(sites))
        code = runner.run()
    except CaiaError as e:
        write_json(run_dir / "outcome.json", {"status": "failed", "message": str(e)})
        return 1
    except Exception:  # a bug or an NVFLARE failure: its text may quote a site's, so it stays in launcher.log
        traceback.print_exc()
        message = f"NVFLARE's simulator failed; see its log on this machine: {run_dir / 'launcher.log'}"
        write_json(run_dir / "outcome.json", {"status": "failed", "message": message})
        return 1
    write_json(run_dir / "outcome.json", outcome(run_dir, code, sites, min_clients))
    return 0


def outcome(run_dir: Path, code: int, sites: dict, min_clients: int) -> dict:
    """How the run ended, from what the guard, the server and the sites left behind. Of a site's
    failure record only its report (caia_jupyter.contracts.failures), parsed strictly, is taken."""
    admissions = read_json(run_dir / "sites.json")
    if read_json(run_dir / "run.json").get("statistics"):
        return statistics_outcome(run_dir, code, admissions, list(sites), min_clients)
    status = Status.parse(read_json(run_dir / "status.json"), sites)
    admitted = [s for s, a in admissions.items() if a.get("state") == "approved"]
    failed = {}
    for site in admitted:
        record = read_json(local_failure_record(run_dir, site))
        if record:
            failed[site] = failures.parse(record.get("report") if isinstance(record, dict) else None)
    result = {"code": code, "failed_sites": {site: report.model_dump() for site, report in failed.items()},
              "completed_sites": list(status.sites) if status.phase == "finished" else []}
    if admissions and len(admitted) < min_clients:
        return {**result, "status": "refused", "message": refused_message(admitted, list(sites), min_clients)}
    reasons = describe_failures(failed, run_dir)
    if code == 0 and status.phase == "finished":
        return {**result, "status": "finished", "message": finished_message(status, list(sites), min_clients, reasons)}
    reason = ended_message(status, reasons)
    return {**result, "status": "failed",
            "message": reason or f"the NVFLARE simulator exited with code {code}; see {run_dir / 'workspace' / 'server' / 'log.txt'}"}


def statistics_outcome(run_dir: Path, code: int, admissions: dict, sites: list[str], min_clients: int) -> dict:
    """How a statistics run ended: finished when NVFLARE's controller wrote its statistics."""
    admitted = [s for s, a in admissions.items() if a.get("state") == "approved"]
    result = {"code": code, "failed_sites": {}, "completed_sites": admitted}
    if admissions and len(admitted) < min_clients:
        return {**result, "status": "refused", "message": refused_message(admitted, sites, min_clients)}
    from .job import collect_statistics

    if code == 0 and collect_statistics(run_dir / "workspace", run_dir):
        return {**result, "status": "finished", "message": f"statistics from {plural(len(admitted), 'site')}"}
    return {**result, "completed_sites": [], "status": "failed",
            "message": f"NVFLARE's statistics workflow ended without a result; see {run_dir / 'workspace' / 'server' / 'log.txt'}"}


if __name__ == "__main__":
    sys.exit(launch(Path(sys.argv[1]).resolve()))
