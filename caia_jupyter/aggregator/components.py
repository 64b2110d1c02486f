"""Server-side NVFLARE components of a caia job. They run no researcher code.

`CaiaFedAvg` starts from initial weights (an .npz of arrays, loaded without pickle, and the map of
their dtypes), runs FedAvg weighted by each site's `num_samples` by the rule of `contracts.weights`,
saves the global model each round (.npz), and finally asks every site to evaluate the final global
model. The server handles numpy arrays only: caia converts them to and from torch at each site. A
site that returns no result in a round (its code failed, or it timed out) leaves the run: later
rounds go on without it while at least `min_clients` sites remain, and `status.json` records it
under "left" with that round. A site's update is untrusted: one with no examples, non-finite
weights, or weights that do not fit the global model is left out of that round's average, and
`status.json` says so ("excluded"). With `updates="weight_diff"` sites send their weights' difference
from the global model and the average of the differences is added to it; an entry a site's privacy
filter removed from its update takes no part in that entry's average (`contracts.weights`). `MetricsReceiver` appends every metric record, (site, round,
name, value, time), to a JSON-lines file, dropping one whose name is not a metric name
(`contracts.metric_names`) or whose value is not a number; a value that is not finite is recorded
as missing (null), which every surface flags. It keeps each site's reports of data it admitted
breaking the bundle's standard (`contracts.standard.Report`, parsed strictly; anything else dropped).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.widgets.streaming import AnalyticsReceiver
from nvflare.app_common.workflows.model_controller import ModelController

from ..contracts import failures, standard, weights
from ..contracts.fsutil import read_json, write_atomic, write_json
from ..contracts.metric_names import valid_name

INITIAL_MODEL = "initial_model.npz"
GLOBAL_MODEL = "global_model.npz"
METRICS = "metrics.jsonl"
STATUS = "status.json"
FAILURES = "site_failures.json"
STANDARDS = "site_standards.json"  # {site: [standard.Report, ...]}: data a site admitted breaking its standard
STATISTICS_FILE = "statistics.json"  # a statistics job's result, as NVFLARE's JSON writer writes it in the job folder
APP_COMMAND = "caia"
MAX_DATASETS = 100  # standard reports kept per site (one per dataset the bundle requests)
log = logging.getLogger(__name__)


class CaiaFedAvg(ModelController):
    def __init__(self, num_rounds: int, min_clients: int, round_timeout: int = 0, output_dir: str = "",
                 updates: str | None = None):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.num_rounds = num_rounds
        self.min_clients = min_clients
        self.round_timeout = round_timeout
        self.output_dir = output_dir  # "" = the job's run directory in the server workspace
        self.updates = updates  # manifest job.updates: None (full weights) or "weight_diff"
        self._dtypes: dict[str, str] = {}  # entry -> its torch dtype (contracts.weights)
        self._excluded: list[dict] = []  # {"site", "round", "reason"}: updates left out of an average

    def run(self) -> None:
        custom = Path(self.engine.get_workspace().get_app_custom_dir(self.fl_ctx.get_job_id()))
        with np.load(custom / INITIAL_MODEL, allow_pickle=False) as arrays:
            params = dict(arrays)
        self._dtypes = model_dtypes(custom / weights.DTYPES_FILE, params)
        self._initial = params  # in clear: the shapes and dtypes every update must fit
        write_json(self._output(weights.DTYPES_FILE), self._dtypes)
        sites = sorted(c.name for c in self.engine.get_clients())
        left: dict[str, int] = {}  # site -> the round it returned no result in; it is not asked again
        self._status("training", 0, sites)
        for round in range(self.num_rounds):
            model = self._global_model(params, round)
            results = self.send_model_and_wait(task_name="train", data=model, targets=sites, timeout=self.round_timeout)
            if self.abort_signal.triggered:
                return self._status("aborted", round, sites, "the run was aborted", left)
            sites = remaining(sites, results, round, left)
            if len(sites) < self.min_clients:
                message = (f"round {round}: {len(sites)} of {len(sites) + len(left)} sites returned results "
                           f"({', '.join(sites) or 'none'}); min_clients is {self.min_clients}")
                self._status("failed", round, sites, message, left)
                return self.panic(message)
            params = self._average(results, round, params)
            self._save(params)
            self._status("training", round + 1, sites, left=left)
        final = self._global_model(params, self.num_rounds)
        results = self.send_model_and_wait(task_name="validate", data=final, targets=sites, timeout=self.round_timeout)
        self._evaluated(results)
        self._status("finished", self.num_rounds, remaining(sites, results, self.num_rounds, left), left=left)

    def _average(self, results: list[FLModel], round: int, params: dict) -> dict:
        """The next global model: `weights.average` of this round's usable updates. An unusable one
        (`unusable`) is left out and recorded; with none usable, the global model `params` stays."""
        kept = []
        for result in results:
            weight = result.meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
            reason = unusable(result.params, weight, params, self._dtypes)
            if not reason and _params_type(result) != ("DIFF" if self.updates == "weight_diff" else "FULL"):
                reason = "malformed_update"  # a site sending full weights where differences are due, or the reverse
            if reason:
                site = result.meta.get("client_name", "?")
                self._excluded.append({"site": site, "round": round, "reason": reason})
                log.warning("caia left %s's update of round %d out of the average: %s", site, round, reason)
            else:
                kept.append((result.params, weight))
        return weights.average(kept, self._dtypes, params, diff=self.updates == "weight_diff") if kept else params

    def _global_model(self, params: dict, round: int) -> FLModel:
        """The task data of `round` (the final evaluation: `num_rounds`)."""
        return FLModel(params=params, current_round=round, total_rounds=self.num_rounds)

    def _save(self, params: dict) -> None:
        save_arrays(params, self._output(GLOBAL_MODEL))

    def _evaluated(self, results: list[FLModel]) -> None:
        """The sites' answers to the final evaluation: their metrics reached MetricsReceiver already."""

    def _status(self, phase: str, rounds_done: int, sites: list[str], message: str = "", left: dict | None = None) -> None:
        status = {"phase": phase, "rounds_done": rounds_done, "rounds": self.num_rounds, "sites": sites,
                  "left": dict(left or {}), "message": message, "excluded": self._excluded, "time": time.time()}
        write_json(self._output(STATUS), status)

    def _output(self, name: str) -> Path:
        return Path(self.output_dir or self.get_run_dir()) / name


def remaining(sites: list[str], results: list[FLModel], round: int, left: dict[str, int]) -> list[str]:
    """The `sites` that returned a result in `round`; each other one is added to `left` (site -> round).
    send_model_and_wait waits for every site it targets; with ignore_result_error=True a failed task
    (a site whose code failed answers EXECUTION_EXCEPTION) is dropped rather than stopping the job."""
    answered = {r.meta.get("client_name") for r in results}
    left.update({site: round for site in sites if site not in answered})
    return [site for site in sites if site in answered]


def model_dtypes(path: Path, params: dict) -> dict[str, str]:
    """The dtype of each entry of the initial model `params`, from the map beside it (a job made
    without one: the arrays' own dtypes). Raises ValueError when the map does not fit `params`."""
    found = weights.read_dtypes(read_json(path)) if path.is_file() else {k: a.dtype.name for k, a in params.items()}
    if found.keys() != params.keys() or any(weights.carrier(found[k]) != a.dtype for k, a in params.items()):
        raise ValueError(f"{path.name} does not fit the initial model's arrays")
    return {name: found[name] for name in params}  # in the model's order (a JSON map may be sorted)


def unusable(update, weight, reference: dict, dtypes: dict[str, str]) -> str | None:
    """Why a site's update (`update` {entry: array}, its `num_samples` `weight`) cannot enter an
    average with global model `reference` {entry: array} of entry dtypes `dtypes` {entry: name}: a key
    of `failures.EXCLUDED`, or None when it can. It fits when every entry is an array of the global
    model's shape in the entry's carrier dtype and `weight` an int in 1..MAX_NUM_SAMPLES; then floating
    values must be finite in the entry's own dtype, so the average is too (`contracts.weights`). An
    update may lack entries of the global model (a site's privacy filter excluded them), never add one."""
    if type(weight) is int and weight == 0:
        return "no_examples"
    if type(weight) is not int or not 0 < weight <= weights.MAX_NUM_SAMPLES or not isinstance(update, dict) \
            or not update.keys() <= reference.keys():
        return "malformed_update"
    for name, array in update.items():
        if not isinstance(array, np.ndarray) or array.shape != reference[name].shape or array.dtype != weights.carrier(dtypes[name]):
            return "malformed_update"
    if not all(weights.finite(array, dtypes[name]) for name, array in update.items()):
        return "non_finite_weights"
    return None


def _params_type(result: FLModel) -> str:
    """"FULL" or "DIFF": what a site's result holds (NVFLARE's Client API sets it)."""
    kind = result.params_type
    return getattr(kind, "value", kind) or "FULL"


def save_arrays(params: dict, path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    write_atomic(path, buffer.getvalue())


class MetricsReceiver(AnalyticsReceiver):
    """Appends every scalar a site logs (its round as the step) to metrics.jsonl, and answers the
    researcher's live pulls on a deployed server: app command `caia`, {"since": n} -> the records
    from the n-th on and the run's status."""

    def __init__(self, output_dir: str = ""):
        super().__init__()
        self.output_dir = output_dir  # "" = the job's run directory in the server workspace
        self._file = None
        self._records: list[dict] = []
        self._failures: dict[str, dict] = {}  # site -> its failure report (caia_jupyter.contracts.failures)
        self._standards: dict[str, list[dict]] = {}  # site -> its reports of data breaking its standard
        self._run_dir = None

    def initialize(self, fl_ctx):
        engine = fl_ctx.get_engine()
        self._run_dir = Path(self.output_dir or engine.get_workspace().get_run_dir(fl_ctx.get_job_id()))
        self._file = open(self._run_dir / METRICS, "a", encoding="utf-8")
        if hasattr(engine, "register_app_command"):  # a deployed server (the simulator has no admin commands)
            engine.register_app_command(APP_COMMAND, self._answer)

    def _answer(self, topic, command, fl_ctx) -> dict:
        since = command.get("since", 0) if isinstance(command, dict) else 0
        with self._save_lock:
            records = self._records[since:]
        return {"since": since, "records": records, "status": read_json(self._run_dir / STATUS), "failures": dict(self._failures),
                "standards": dict(self._standards)}

    def save(self, fl_ctx, shareable, record_origin: str):
        from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType

        data = AnalyticsData.from_dxo(from_shareable(shareable))
        if data is not None and data.tag == failures.FAILURE_TAG:
            self.save_failure(record_origin, data.value)
            return
        if data is not None and data.tag == standard.STANDARD_TAG:
            self.save_standard(record_origin, data.value)
            return
        if data is None or data.data_type not in (AnalyticsDataType.SCALAR, AnalyticsDataType.SCALARS):
            return
        values = data.value if data.data_type == AnalyticsDataType.SCALARS else {data.tag: data.value}
        now, dropped = time.time(), 0
        for name, value in values.items():
            if not (valid_name(name) and _number(value)):  # sent by code at the site: untrusted
                dropped += 1
                continue
            value = float(value) if _finite(value) else None  # not finite: recorded as missing
            record = {"site": record_origin, "round": int(data.step or 0), "name": name, "value": value, "time": now}
            self._records.append(record)
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if dropped:  # the names are not logged: they may be anything
            log.warning("caia dropped %d metric record(s) from %s: a name that is not a metric name or a value that is "
                        "not a number", dropped, record_origin)

    def save_failure(self, site: str, report) -> None:
        """Keep a site's first failure report, parsed strictly: anything but a report of the closed
        vocabulary is kept as category "unknown", with nothing of what the site sent."""
        if site in self._failures:
            return
        self._failures[site] = failures.parse(report).model_dump()
        write_json(self._run_dir / FAILURES, self._failures)

    def save_standard(self, site: str, value) -> None:
        """Keep a site's report of a dataset breaking its standard, parsed strictly (`standard.parse`),
        the first per dataset; anything else is dropped, unread (the site sends one per dataset)."""
        report = standard.parse(value)
        kept = self._standards.get(site, [])
        if report is None or any(r["dataset"] == report.dataset for r in kept) or len(kept) >= MAX_DATASETS:
            log.warning("caia dropped a dataset standard report from %s: not a report, or one too many", site)
            return
        self._standards[site] = [*kept, report.model_dump()]
        write_json(self._run_dir / STANDARDS, self._standards)

    def finalize(self, fl_ctx):
        if self._file:
            self._file.close()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
