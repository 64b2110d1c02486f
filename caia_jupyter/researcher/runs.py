"""A federated run, seen from the researcher's side: one directory, one handle.

    run.json       what was submitted: bundle id, target, sites, settings, the DP request ("privacy"),
                   the rules of the bundle's dataset standards ("standards": dataset -> field -> rules)
    preparing.json the process making the job, until launcher.pid names the launcher (`mark_preparing`)
    sites.json     each site's admission by its guard: approved, or refused with the reason
    status.json    the server's progress: phase, rounds done, sites still in the run, sites that left
                   it (round), site updates left out of an average ("excluded")
    metrics.jsonl  every (site, round, name, value, time) record (value null: not finite at the site)
    global_model.npz the latest global model, as the server keeps it (numpy arrays)
    model_dtypes.json each entry's torch dtype (caia_jupyter.contracts.weights)
    global_model.pt  the same as a torch state dict, every entry in its dtype, written when the run ends
    global_model.guarantee.json  the guarantee that model was trained under (`Run.guarantee`, with the
                   sha256 of global_model.pt), written beside it for a run that requested differential privacy
    site_standards.json  each site's reports of data it admitted breaking the bundle's standard
                   (caia_jupyter.contracts.standard.Report), as the server received them
    outcome.json   how the run ended (written last); a failed site's report in the closed
                   vocabulary of caia_jupyter.contracts.failures

Every surface (CLI, widget, server extension) reads a run through `Run`, and tells about a site's
failure only what `failures.describe` renders from its report.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..contracts import failures as failure_reports
from ..contracts import standard, weights
from ..contracts.errors import CaiaError
from ..contracts.fsutil import read_json, write_atomic, write_json
from ..contracts.privacy import ACCOUNTANT, EPSILON
from . import metrics as metric_records
from .wording import plural

FINAL = ("finished", "failed", "refused", "aborted")
MODEL_FILE = "global_model.pt"
GUARANTEE_FILE = "global_model.guarantee.json"  # the guarantee beside the exported model (`Run.guarantee`)
SITE_FAILURES = "site_failures.json"  # the failure reports the server received (aggregator.components.FAILURES)
SITE_STANDARDS = "site_standards.json"  # the standard reports the server received (aggregator.components.STANDARDS)
TARGETS = ("simulator", "poc", "prod")  # where a run can run (run.json "target")
# The modules `start_launcher` runs as `python -m MODULE RUN_DIR`, one per kind of target.
LAUNCHERS = ("caia_jupyter.targets.simulator", "caia_jupyter.targets.remote")


PREPARING = "preparing.json"  # the process making the run's job, until its launcher starts


def mark_preparing(run_dir: Path) -> None:
    """Say that this process is making the job of the run in `run_dir` (seconds before its launcher
    starts): meanwhile the run is "starting", not "failed", and counts as live. The mark counts only
    while this very process lives (pid and start time) and no launcher.pid is written."""
    import psutil

    write_json(Path(run_dir) / PREPARING, {"pid": os.getpid(), "process_started": psutil.Process().create_time()})


def start_launcher(run_dir: Path, module: str) -> "Run":
    """Start `python -m MODULE RUN_DIR`, the process that keeps the run directory current, in its
    own process group (a kernel can restart meanwhile; `Run.abort` stops the whole group)."""
    with open(run_dir / "launcher.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module, str(run_dir)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=run_dir)
    write_atomic(run_dir / "launcher.pid", str(process.pid))
    (run_dir / PREPARING).unlink(missing_ok=True)
    return Run(run_dir, process)


class Run:
    def __init__(self, path: str | Path, process=None):
        self.path = Path(path).resolve()
        if not (self.path / "run.json").is_file():
            raise CaiaError(f"{self.path} is not a caia run directory (no run.json); pass a directory under runs/")
        self.spec = read_json(self.path / "run.json")
        if not isinstance(self.spec.get("rounds"), int) or not isinstance(self.spec.get("sites"), (dict, list)):
            raise CaiaError(f"{self.path}/run.json is not a caia run description; pass a run directory caia made")
        # Site names reach dicts, terminals and pages: each a printable string, as caia writes them.
        if not all(isinstance(site, str) and site.isprintable() and site for site in self.spec["sites"]):
            raise CaiaError(f"{self.path}/run.json is not a caia run description: its sites are not site names; "
                            "pass a run directory caia made")
        self._process = process  # the launcher, when this process started it
        self._reader = metric_records.MetricsReader(self.path / "metrics.jsonl")

    def __repr__(self) -> str:
        done, total = self.progress
        return f"<Run {self.path.name}: {self.status}, {done}/{plural(total, 'round')} done>"

    # -- what the run says about itself ------------------------------------------------

    def _json(self, name: str) -> dict:
        return read_json(self.path / name)

    @property
    def outcome(self) -> dict:
        return self._json("outcome.json")

    @property
    def status(self) -> str:
        """starting (its job being made, `mark_preparing`, or its launcher starting) | running | finished |
        failed | refused | aborted"""
        if self.outcome:
            return self.outcome["status"] if self.outcome.get("status") in FINAL else "failed"
        if not self._launcher_alive() and not self._preparing():
            return "failed"
        return "running" if self.server_status.phase else "starting"

    @property
    def message(self) -> str:
        """Why the run ended as it did (empty while it runs or when it finished cleanly)."""
        if not self.outcome and self.status == "failed":
            return "the run's launcher is gone without recording an outcome; see launcher.log"
        return self.outcome.get("message", "")

    @property
    def server_status(self) -> Status:
        """status.json, read strictly (`Status.parse`)."""
        return Status.parse(self._json("status.json"), self.spec["sites"])

    @property
    def progress(self) -> tuple[int, int]:
        status = self.server_status
        return status.rounds_done, (status.rounds if status.rounds is not None else self.spec["rounds"])

    @property
    def sites(self) -> dict[str, str]:
        """Site -> its state, each from what that site did (see `site_states`)."""
        return site_states(self.spec["sites"], self._admissions(), self.server_status, self.outcome,
                           set(self._failure_reports()))

    @property
    def tones(self) -> dict[str, str]:
        """Site -> "ok" | "neutral" | "bad" (`tones`): how each site's state should look."""
        return tones(self.sites)

    @property
    def headline(self) -> str:
        """The run in one line (`headline`), built from the closed vocabulary only: never a site's own text."""
        return headline(self.status, self.spec, self._admissions(), self.server_status, self._failure_reports())

    @property
    def final_round(self) -> int | None:
        """The round whose model is the run's final global model, once the run ended with one (a
        finished run: its rounds; one that stopped: the rounds it completed); None before."""
        if self.status not in FINAL or not any((self.path / name).is_file() for name in (MODEL_FILE, "global_model.npz")):
            return None
        return self.server_status.rounds_done

    @property
    def bundle_id(self) -> str:
        """The id of the bundle the run ran (run.json "bundle_id"), "" when it does not hold a string."""
        bundle_id = self.spec.get("bundle_id")
        return bundle_id if isinstance(bundle_id, str) else ""

    @property
    def target(self) -> str:
        """Where the run ran (run.json "target", one of TARGETS), "" when it does not say one of them."""
        target = self.spec.get("target")
        return target if target in TARGETS else ""

    @property
    def started_at(self) -> str | None:
        """When the run was created: run.json "created", re-written as ISO 8601 UTC to the second (a
        time without a zone read as UTC); None when it does not hold such a time."""
        created = self.spec.get("created")
        try:
            began = datetime.fromisoformat(created)
        except (TypeError, ValueError):
            return None
        began = began if began.tzinfo else began.replace(tzinfo=timezone.utc)
        return began.astimezone(timezone.utc).isoformat(timespec="seconds")

    @property
    def duration_s(self) -> float | None:
        """Seconds from the run's creation to its outcome; None while it runs (or when it does not say when it began)."""
        if not self.outcome or not self.started_at:
            return None
        try:
            began = datetime.fromisoformat(self.started_at)
            ended = datetime.fromtimestamp((self.path / "outcome.json").stat().st_mtime, timezone.utc)
        except (ValueError, OSError):
            return None
        return round(max((ended - began).total_seconds(), 0.0), 1)

    @property
    def refusals(self) -> dict[str, str]:
        return {site: str(a.get("reason", "")) for site, a in self._admissions().items() if a.get("state") == "refused"}

    def _admissions(self) -> dict[str, dict]:
        """sites.json: each site's admission, an object; anything else in the file is left out."""
        return {site: a for site, a in self._json("sites.json").items() if isinstance(a, dict)}

    @property
    def failures(self) -> dict[str, str]:
        """Site -> why it failed, one line of the closed vocabulary of caia_jupyter.contracts.failures (on the
        simulator, plus where the site's full record lies on this machine)."""
        local = self.path if self.target == "simulator" else None
        return describe_failures(self._failure_reports(), local)

    def _failure_reports(self) -> dict[str, failure_reports.Report]:
        """The outcome's reports once the run ended; before, those the server has received so far."""
        received = self.outcome.get("failed_sites") if self.outcome else self._json(SITE_FAILURES)
        return failure_reports.parse_all(received, self.spec["sites"])

    @property
    def global_model(self) -> Path | None:
        """The final global model as a torch state dict file, once the run has ended."""
        path = self.path / MODEL_FILE
        if not path.is_file() and self.status in FINAL:
            export_global_model(self.path, self.guarantee)  # the server keeps arrays (it never imports torch)
        return path if path.is_file() else None

    @property
    def guarantee_file(self) -> Path | None:
        """GUARANTEE_FILE, the guarantee written beside the global model, once a DP run's model is exported."""
        path = self.path / GUARANTEE_FILE
        return path if self.global_model and path.is_file() else None

    @property
    def guarantee(self) -> dict | None:
        """The differential privacy guarantee of the run, None for a run that requested none:

            bundle_id       the bundle the sites ran (its id covers the request)
            model_sha256    sha256 (hex) of global_model.pt, None until it is exported
            mechanism       "dp-sgd"; accountant: the Opacus accountant the sites count with ("rdp")
            epsilon, delta  the budget of each site's whole run
            max_grad_norm, local_epochs, rounds   what the noise is calibrated for
            epsilon_spent   {site: the last epsilon that site reported spent (its `epsilon` metric)};
                            a site that reported none is left out
        """
        privacy = self.spec.get("privacy")
        if not isinstance(privacy, dict):
            return None
        spent = {}
        for record in sorted(self.records(), key=lambda r: (r.round, r.time)):
            if record.name == EPSILON and record.value is not None:
                spent[record.site] = record.value
        model = self.path / MODEL_FILE
        return {"bundle_id": self.spec.get("bundle_id"),
                "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None,
                "mechanism": privacy.get("mechanism"), "accountant": ACCOUNTANT,
                **{key: privacy.get(key) for key in ("epsilon", "delta", "max_grad_norm", "local_epochs")},
                "rounds": self.spec["rounds"], "epsilon_spent": dict(sorted(spent.items()))}

    @property
    def standard_reports(self) -> dict[str, list[standard.Report]]:
        """Site -> its reports of data it admitted breaking the bundle's standard, read as untrusted
        (`standard.reports`): only the run's own sites, only rules of the bundle's own standards."""
        return standard.reports(self._json(SITE_STANDARDS), self.spec["sites"], self.spec.get("standards"))

    @property
    def notes(self) -> list[str]:
        """What the run left out or let in, one line each: a site that admitted the bundle with data
        breaking its standard (`standard_reports`: the rules it breaks, never a count or a value), a simulated site that ran the code without the
        kernel's sandbox (`site.sandbox`: its policy preferred, this machine's kernel without Landlock),
        a site's update left out of a round's average (why, in the fixed words of `failures.EXCLUDED`),
        a metric a site sent that was not finite."""
        broken = self.standard_reports
        lines = [report.text(site) for site in self.spec["sites"] for report in broken.get(site, [])]
        lines += [failure_reports.UNCONFINED.format(site=site) for site, a in self._admissions().items()
                  if site in self.spec["sites"] and a.get("sandbox") == "process"]
        lines += [failure_reports.describe_excluded(site, round, reason) for site, round, reason in self.server_status.excluded]
        return lines + [failure_reports.NON_FINITE_METRIC.format(site=r.site, name=r.name, round=r.round)
                        for r in self.records() if r.value is None]

    def records(self) -> list[metric_records.Record]:
        """Every metric record so far of the run's own sites, in the order the server received them."""
        self._reader.poll()
        return [r for r in self._reader.records if r.site in self.spec["sites"]]

    def metrics(self):
        """Every metric record so far, as a pandas DataFrame (site, round, name, value, time)."""
        return metric_records.frame(sorted(self.records(), key=lambda r: (r.site, r.round, r.time)))

    def table(self, name: str):
        """One metric as a DataFrame: a row per round, a column per site."""
        frame = self.metrics()
        frame = frame[frame["name"] == name]
        return frame.pivot_table(index="round", columns="site", values="value", aggfunc="last")

    def global_metrics(self) -> list[tuple[int, str, float | None]]:
        """(round, name, value) for every round and metric so far, the mean over sites weighted by
        num_samples (`global_metrics`)."""
        return global_metrics(self.records())

    def final_metrics(self) -> dict[str, dict]:
        """{"sites": {site: {metric: value}}, "global": {metric: value}}: each site's evaluation of
        the final global model (round == the run's rounds), and the `global_metrics` of that round
        ({} when no site evaluated it). Kept apart, since any name, "global" too, can be a site's.
        Every value is finite: a missing one is left out."""
        rounds = self.spec["rounds"]
        frame = self.metrics().dropna(subset=["value"])  # a missing value counts for no site
        final = frame[frame["round"] == rounds]
        per_site = {site: dict(zip(rows["name"], rows["value"])) for site, rows in final.groupby("site")}
        overall = {name: value for round, name, value in self.global_metrics()
                   if round == rounds and value is not None} if per_site else {}
        return {"sites": per_site, "global": overall}

    # -- control -------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> str:
        """Block until the run ends (or `timeout` seconds pass); returns the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status not in FINAL:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll)
        if self._process is not None and self.status in FINAL:
            self._process.wait()
        return self.status

    def abort(self) -> str:
        """Stop the run and every process it started; returns the status (unchanged if it ended).

        launcher.pid is a file of the run folder, which may come from anywhere: only a process
        that is caia's launcher of this very run directory is signalled. Raises CaiaError, writing
        nothing, when none runs for a run that has not ended."""
        if self.outcome:
            return self.status
        launcher = self._launcher()
        if launcher is None:
            raise CaiaError(f"no caia process runs for {self.path.name}, so there is nothing to abort")
        try:
            if os.getpgid(launcher.pid) == launcher.pid:
                os.killpg(launcher.pid, signal.SIGTERM)  # the launcher leads its own process group
            else:
                launcher.terminate()
        except (ProcessLookupError, OSError):
            pass
        self.wait(timeout=30, poll=0.2)
        if not self.outcome:
            write_json(self.path / "outcome.json", {"status": "aborted", "message": "aborted by the researcher"})
        return self.status

    def _launcher_pid(self) -> int | None:
        try:
            return int((self.path / "launcher.pid").read_text())
        except (OSError, ValueError):
            return None

    def _launcher(self):
        """The psutil.Process of caia's launcher of this run directory, running, or None: the pid in
        launcher.pid counts only if that process's command line is `python -m <LAUNCHERS> RUN_DIR`
        for this very directory."""
        import psutil

        pid = self._launcher_pid()
        if not pid or pid <= 0:
            return None
        try:
            process = psutil.Process(pid)
            args = process.cmdline()
            if (process.status() == psutil.STATUS_ZOMBIE or len(args) != 4 or not Path(args[0]).name.startswith("python")
                    or args[1] != "-m" or args[2] not in LAUNCHERS):
                return None
            if (Path(process.cwd()) / args[3]).resolve() != self.path:
                return None
        except (psutil.Error, OSError, ValueError):  # gone, not ours to read, a path that cannot resolve
            return None
        return process

    def _preparing(self) -> bool:
        """Whether the process that marked this run as being prepared (`mark_preparing`) still makes its
        job: no launcher.pid yet, and that very process (pid and start time) runs."""
        import psutil

        mark = self._json(PREPARING)
        if (self.path / "launcher.pid").exists() or not isinstance(mark.get("pid"), int) or mark["pid"] <= 0:
            return False
        try:
            process = psutil.Process(mark["pid"])
            return process.create_time() == mark.get("process_started") and process.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, OSError):
            return False

    def _launcher_alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._launcher() is not None


@dataclass(frozen=True)
class Status:
    """status.json, the server's progress, read strictly: a file received from a server (or altered
    on disk) is untrusted, so each field keeps only what has its shape, and an entry about a site
    that is not one of the run's own is dropped.

    phase        "" (no status yet), or the server's word: training | finished | failed | aborted
    rounds_done  rounds done, an int >= 0 (0 when not one)
    rounds       the run's rounds as the server counts them, or None
    sites        the run's own sites still in it, in the server's order
    left         site -> the round it left the run in (an int >= 0)
    excluded     (site, round, reason): an update left out of an average, reason a key of
                 `failures.EXCLUDED`
    message      the server's reason for ending, on one line
    """

    phase: str = ""
    rounds_done: int = 0
    rounds: int | None = None
    sites: tuple[str, ...] = ()
    left: dict[str, int] = field(default_factory=dict)
    excluded: tuple[tuple[str, int, str], ...] = ()
    message: str = ""

    @classmethod
    def parse(cls, raw, sites) -> Status:
        """The status from status.json's object `raw` ({} or anything else: no status yet) for a
        run of `sites` (names, or a mapping by name). Never raises."""
        if not isinstance(raw, dict):
            return cls()

        def own(site) -> bool:
            return isinstance(site, str) and site in sites

        def count(value) -> bool:
            return type(value) is int and 0 <= value <= failure_reports.MAX_ROUND

        listed = raw.get("sites") if isinstance(raw.get("sites"), list) else []
        left = raw.get("left") if isinstance(raw.get("left"), dict) else {}
        excluded = raw.get("excluded") if isinstance(raw.get("excluded"), list) else []
        phase, message = raw.get("phase"), raw.get("message")
        return cls(
            phase=phase if isinstance(phase, str) else "",
            rounds_done=raw.get("rounds_done") if count(raw.get("rounds_done")) else 0,
            rounds=raw.get("rounds") if count(raw.get("rounds")) else None,
            sites=tuple(dict.fromkeys(s for s in listed if own(s))),
            left={site: round for site, round in left.items() if own(site) and count(round)},
            excluded=tuple((e["site"], e["round"], e["reason"]) for e in excluded
                           if isinstance(e, dict) and own(e.get("site")) and count(e.get("round"))
                           and isinstance(e.get("reason"), str) and e["reason"] in failure_reports.EXCLUDED),
            message=" ".join(message.split()) if isinstance(message, str) else "",
        )


def site_states(sites, admissions: dict, status: Status, outcome: dict, failed: set[str]) -> dict[str, str]:
    """Each site's state, from its admission (sites.json), the server's status (`Status`), the run's
    outcome and the sites that sent a failure report: site -> one of

        waiting      not deployed yet            approved     admitted, the run not begun
        refused      its guard refused the bundle
        running      in the run                  done         in the run until it finished
        failed       its code failed, or it returned no result in a round (it left the run)
        not started  admitted, but too few sites were, so the run never began
        not deployed the run ended before the site admitted or refused the bundle (offline, say)
        stopped      admitted, healthy, and the run ended without finishing (other sites failed, or an abort)
    """
    completed = outcome.get("completed_sites") if isinstance(outcome.get("completed_sites"), list) else []
    states = {}
    for site in sites:
        admission = admissions.get(site, {}).get("state")
        if admission == "refused":
            states[site] = "refused"
        elif site in failed or site in status.left:
            states[site] = "failed"
        elif outcome:
            states[site] = ("done" if site in completed else "stopped" if outcome.get("status") != "refused"
                            else "not started" if admission == "approved" else "not deployed")
        elif admission == "approved":
            states[site] = "running" if status.phase else "approved"
        else:
            states[site] = "waiting"
    return states


# A site's state -> how it should look; every state not named here is "neutral" (waiting, approved,
# running, not started, not deployed, stopped: nothing went wrong at that site's code).
TONES = {"done": "ok", "failed": "bad", "refused": "bad"}


def tones(states: dict[str, str]) -> dict[str, str]:
    """{site: state} (`site_states`) -> {site: "ok" | "neutral" | "bad"}: only a site that failed or
    refused the bundle is "bad"; a healthy site of a run that stopped for others is "neutral"."""
    return {site: TONES.get(state, "neutral") for site, state in states.items()}


def failure_place(report: failure_reports.Report, rounds: int) -> str:
    """Where a site failed, from its report alone: "in round 2 (train)", "in load_data" (before the
    first round), "in the final evaluation (evaluate)", "" for an unreadable report."""
    if report.category == "unknown":
        return ""
    entry = "caia's site runtime" if report.entry == "runtime" else report.entry
    if report.round is None:
        return f"in {entry}"
    if report.round >= rounds:
        return f"in the final evaluation ({entry})"
    return f"in round {report.round} ({entry})"


def headline(run_status: str, spec: dict, admissions: dict, status: Status, reports: dict) -> str:
    """A run in one line, from its status (`Run.status`), run.json `spec`, the sites' admissions, the
    server's `status` and the sites' failure reports {site: Report}. It holds site names, rounds,
    entry points and counts only, never a site's or the server's own text, e.g.

        "site-2 failed in round 2 (train); stopped after 2 of 3 rounds"
        "finished: 3 rounds with site-1, site-3; continued without site-2, which failed in round 2 (train)"
        "refused: 2 of 3 sites admitted the bundle (site-3 refused); min_clients 3"
        "refused: 1 of 3 sites admitted the bundle (site-2 refused; site-3 not deployed)"
        "failed after 1 of 3 rounds" (no site failed: the run's message says why)
    """
    sites, rounds = list(spec["sites"]), spec["rounds"]
    refused = [s for s in sites if admissions.get(s, {}).get("state") == "refused"]
    if run_status == "refused":
        admitted = [s for s in sites if admissions.get(s, {}).get("state") == "approved"]
        absent = [s for s in sites if s not in admitted and s not in refused]  # never deployed (offline, say)
        why = [f"{', '.join(group)} {verb}" for group, verb in ((refused, "refused"), (absent, "not deployed")) if group]
        least = spec.get("min_clients")
        return (f"refused: {len(admitted)} of {plural(len(sites), 'site')} admitted the bundle"
                + (f" ({'; '.join(why)})" if why else "")
                + (f"; min_clients {least}" if type(least) is int else ""))
    if spec.get("statistics") and run_status == "finished":  # one statistics task, no rounds
        done = [s for s in sites if admissions.get(s, {}).get("state") == "approved"]
        return (f"finished: statistics from {', '.join(done)}"
                + (f"; {', '.join(refused)} refused the bundle" if refused else ""))
    gone = {site: reports.get(site) for site in sites if site in reports or site in status.left}

    def why(site) -> str:
        report = gone[site]
        if report is None:
            return f"returned no result in round {status.left[site]}"
        return " ".join(["failed", failure_place(report, rounds)]).strip()

    without = "; ".join([f"continued without {site}, which {why(site)}" for site in gone]
                        + [f"{site} refused the bundle" for site in refused])
    if run_status == "finished":
        return "; ".join(part for part in [f"finished: {plural(status.rounds_done, 'round')} with "
                                           f"{', '.join(status.sites) or 'no site'}", without] if part)
    if run_status in ("starting", "running"):
        progress = "starting" if run_status == "starting" else f"running: round {min(status.rounds_done + 1, rounds)} of {rounds}"
        return "; ".join(part for part in [progress, without] if part)
    failed = "; ".join(f"{site} {why(site)}" for site in gone)
    ended = "aborted" if run_status == "aborted" else "stopped" if failed else "failed"
    done = f"{ended} after {status.rounds_done} of {plural(rounds, 'round')}" if status.phase else f"{ended} before the first round"
    return "; ".join(part for part in [failed, done] if part)


def global_metrics(records) -> list[tuple[int, str, float | None]]:
    """The federation's view of every metric, round by round: (round, name, value), sorted by round
    then name, num_samples itself left out. `value` is the mean of the sites' values of that metric
    at that round, each weighted by the site's num_samples: the last one it reported at or before
    that round (so the final evaluation, round == rounds, is weighted by the last round's training
    size). A site that reported no usable num_samples yet (finite, not negative) weighs 1. A missing
    value (None: not finite at the site) leaves that site out of that round's mean, weight and all;
    `value` is None when no site has a value, or when the weights sum to 0 or the mean is not finite.

    `records`: metric records (site, round, name, value), in the order they arrived (a later one of
    the same site, round and name replaces an earlier one)."""
    values: dict[tuple[int, str], dict[str, float | None]] = {}
    sizes: dict[str, dict[int, float]] = {}
    for r in records:
        if r.name == "num_samples":
            if r.value is not None and math.isfinite(r.value) and r.value >= 0:
                sizes.setdefault(r.site, {})[r.round] = r.value
        else:
            values.setdefault((r.round, r.name), {})[r.site] = r.value

    def weight(site: str, round: int) -> float:
        known = sizes.get(site, {})
        latest = max((at for at in known if at <= round), default=None)
        return 1.0 if latest is None else known[latest]

    found = []
    for (round, name), by_site in sorted(values.items()):
        usable = {site: value for site, value in by_site.items() if value is not None}
        shares = {site: weight(site, round) for site in usable}
        total = sum(shares.values())
        mean = sum(usable[site] * share for site, share in shares.items()) / total if total > 0 else None
        found.append((round, name, mean if mean is not None and math.isfinite(mean) else None))
    return found


def refused_message(admitted: list[str], sites: list[str], min_clients: int) -> str:
    """Why a run did not start: too few sites admitted its bundle."""
    refused = ", ".join(s for s in sites if s not in admitted)
    return (f"{len(admitted)} of {plural(len(sites), 'site')} admitted the bundle (refused: {refused}); "
            f"min_clients is {min_clients}, so the run did not start")


def finished_message(status: Status, sites: list[str], min_clients: int, reasons: dict[str, str]) -> str:
    """How a run finished: its rounds, the sites it finished with, the sites that refused the
    bundle, and each site that left the run (`reasons`: site -> its failure line, as
    `describe_failures` gives)."""
    refused = [s for s in sites if s not in status.sites and s not in status.left]
    parts = [f"{plural(status.rounds_done, 'round')} with {', '.join(status.sites)}"]
    if refused:
        parts.append(f"without {', '.join(refused)}, which refused the bundle (min_clients {min_clients})")
    if status.left:
        parts.append(f"continued without {', '.join(status.left)} (min_clients {min_clients})")
    return "; ".join(parts) + departures(status, reasons)


def ended_message(status: Status, reasons: dict[str, str]) -> str:
    """Why a run that began ended without finishing: the server's reason, each site that left the
    run and each other site's failure line (`reasons`) ("" when nothing tells)."""
    told = (status.message + departures(status, reasons)).removeprefix("; ")
    others = [line for site, line in reasons.items() if site not in status.left]
    return "; ".join(part for part in [told, *others] if part)


def departures(status: Status, reasons: dict[str, str]) -> str:
    """"; SITE left at round N: its failure line" for each site that left the run (`Status.left`)."""
    return "".join(f"; {site} left at round {round}: {reasons.get(site, 'it returned no result')}"
                   for site, round in status.left.items())


def local_failure_record(run_dir: Path, site: str) -> Path:
    """Where a site simulated on this machine keeps the full record of its failure (its app folder)."""
    return Path(run_dir) / "workspace" / site / "simulate_job" / f"app_{site}" / failure_reports.FAILURE_FILE


def describe_failures(reports: dict, simulator_run: Path | None = None) -> dict[str, str]:
    """{site: report} -> {site: its one line}; with `simulator_run`, each line also says where the
    simulated site's full record lies (a path of this machine, never of a real site)."""
    texts = {}
    for site, report in reports.items():
        record = local_failure_record(simulator_run, site) if simulator_run else None
        texts[site] = failure_reports.describe(site, report, record if record and record.is_file() else None)
    return texts


def export_global_model(run_dir: Path, guarantee: dict | None = None) -> Path | None:
    """global_model.npz (server side, no torch) -> MODEL_FILE (a torch state dict, each entry in the
    dtype of `build_model().state_dict()` that model_dtypes.json records), and the `guarantee` it was
    trained under (`Run.guarantee`), when given, in GUARANTEE_FILE beside it with the sha256 of the
    exported bytes as "model_sha256" (the state dict stays loadable with `torch.load(weights_only=True)`).
    Returns the model's path, or None when the run has no global model."""
    import io

    import numpy as np
    import torch

    from ..contracts.tensors import to_tensors

    source = Path(run_dir) / "global_model.npz"
    if not source.is_file():
        return None
    try:
        dtypes = weights.read_dtypes(read_json(Path(run_dir) / weights.DTYPES_FILE))
    except ValueError:  # a run without the map: each array keeps its dtype
        dtypes = {}
    with np.load(source, allow_pickle=False) as arrays:
        state = to_tensors({name: arrays[name] for name in arrays.files}, dtypes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if guarantee is not None:  # first: a model without its guarantee never appears
        write_json(Path(run_dir) / GUARANTEE_FILE,
                   {**guarantee, "model_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
    return write_atomic(Path(run_dir) / MODEL_FILE, buffer.getvalue())
