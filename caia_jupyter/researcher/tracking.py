"""Log a run to MLflow, after the fact, from its run directory (`caia mlflow RUN`, `%federated mlflow RUN`).

One MLflow run per call, in experiment "caia" by default, at the tracking URI given, or else in the
folder `mlruns` beside the run's runs folder (a `file:` URI; MLflow 3 serves that store only with
MLFLOW_ALLOW_FILE_STORE=true, which is set while logging to it). What it holds:

    params     param.<name> (the bundle's job params), rounds, min_clients, datasets, target,
               privacy.<key> (the differential privacy request, if any), encryption (if any)
    metrics    site/<site>/<name> per round (step = the round; the final evaluation's step is the run's
               rounds), global/<name> per round (`runs.global_metrics`); a missing value is not logged
    artifacts  global_model.pt and its guarantee (global_model.guarantee.json), once the run ended with one;
               each must be a regular file in the run folder, not a link (a run folder is untrusted)
    tags       caia.bundle_id, caia.target, caia.status, caia.run (the run folder's name); a run not
               finished also has caia.partial = "true" and its MLflow status says how it ended
               (FAILED, KILLED, or RUNNING while it is live: log it again once it ends)

NVFLARE's own MLflowReceiver (nvflare.app_opt.tracking.mlflow) is not used: it must be configured into
the job before the sites approve it and logs live from the server, while this logs any run, after the
fact, from caia's filtered records, to a tracking server of the researcher's choice.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..contracts.errors import CaiaError
from ..contracts.fsutil import read_json
from .runs import GUARANTEE_FILE, MODEL_FILE, Run

DEFAULT_EXPERIMENT = "caia"
INSTALL = "pip install 'caia-jupyter[mlflow]'"
BATCH = 1000  # MLflow's most metrics in one log_batch
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "refused": "FAILED", "aborted": "KILLED"}


@dataclass(frozen=True)
class Logged:
    """Where a run went: MLflow's tracking URI (its user and password, if any, shown as "***",
    `redacted`), experiment name, run id; the caia run's status, and whether it was logged before it
    finished (`partial`)."""

    tracking_uri: str
    experiment: str
    run_id: str
    status: str
    partial: bool

    def as_dict(self) -> dict:
        return asdict(self)


def default_tracking_uri(run: Run) -> str:
    """The `file:` URI of the folder mlruns beside the run's runs folder (RUNS/../mlruns)."""
    return (run.path.parent.parent / "mlruns").resolve().as_uri()


def log_run(run: Run, tracking_uri: str | None = None, experiment: str | None = None) -> Logged:
    """Log `run` to MLflow as one new MLflow run (see the module docstring for what it holds).

    Raises CaiaError, one line (the URI `redacted`), when MLflow is not installed, when the run
    folder's model or guarantee is not a regular file in it (`artifacts`), or when the tracking store
    refuses or cannot be reached; then the MLflow run begun, if any, is deleted, so nothing
    half-logged stays."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise CaiaError(f"MLflow is not installed; install it with: {INSTALL}") from None
    uri = tracking_uri or default_tracking_uri(run)
    experiment = experiment or DEFAULT_EXPERIMENT
    status = run.status
    partial = status != "finished"
    files, logged_params, rows = artifacts(run, status), params(run), metrics(run)  # every check before MLflow
    with _file_store_allowed(uri):
        client, run_id = MlflowClient(uri), None
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run_id = client.create_run(experiment_id, run_name=run.path.name).info.run_id
            client.log_batch(run_id, params=[Param(k, v) for k, v in logged_params.items()],
                             tags=[RunTag(k, v) for k, v in tags(run, status).items()])
            for start in range(0, len(rows), BATCH):
                client.log_batch(run_id, metrics=[Metric(key, value, stamp, step)
                                                  for key, value, stamp, step in rows[start:start + BATCH]])
            for artifact in files:
                client.log_artifact(run_id, str(artifact))
            if status in MLFLOW_STATUS:
                client.set_terminated(run_id, MLFLOW_STATUS[status])
        except Exception as e:  # MlflowException, a server that is down: the store's own words, on one line
            if run_id:
                try:
                    client.delete_run(run_id)
                except Exception:
                    pass  # the store is gone: there is nothing to clean up there
            reason = redacted(" ".join(str(e).split()), uri)[:300]
            raise CaiaError(f"MLflow at {redacted(uri)} refused the run ({type(e).__name__}: {reason}); "
                            "check --tracking-uri and that the tracking server runs") from None
    return Logged(redacted(uri), experiment, run_id, status, partial)


def redacted(text: str, uri: str | None = None) -> str:
    """`text` with the user and password of tracking URI `uri` (default: `text` itself is the URI),
    "user:password@" in "https://user:password@host/", replaced by "***@": for every output and error."""
    userinfo = urlsplit(uri if uri is not None else text).netloc.rpartition("@")[0]
    return text.replace(userinfo + "@", "***@") if userinfo else text


def artifacts(run: Run, status: str) -> list[Path]:
    """The files logged as artifacts: the run's global model and its guarantee, once the run ended
    with them. Raises CaiaError, one line, for one that is not a regular file of the run folder
    (a link, a folder): a run folder may come from anywhere, and a link would send any file of this
    machine to the tracking server."""
    if status not in MLFLOW_STATUS or run.global_model is None:  # (reading it exports the server's arrays)
        return []
    found = []
    for name in (MODEL_FILE, GUARANTEE_FILE):
        path = run.path / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise CaiaError(f"{path} is not a regular file of the run folder (a link or a folder); "
                            "remove it, or log a run folder caia wrote")
        found.append(path)
    return found


def params(run: Run) -> dict[str, str]:
    """The MLflow params of a run: its bundle's job (from the job the sites ran) and its settings."""
    job = job_of(run)
    found = {f"param.{name}": value for name, value in job["params"].items()}
    found.update(rounds=run.spec["rounds"], min_clients=run.spec.get("min_clients"), target=run.target,
                 datasets=",".join(job["datasets"]))
    privacy = run.spec.get("privacy") if isinstance(run.spec.get("privacy"), dict) else {}
    found.update({f"privacy.{key}": value for key, value in privacy.items()})
    if job.get("encryption"):
        found["encryption"] = job["encryption"]
    return {key: str(value) for key, value in found.items() if value is not None and value != ""}


def job_of(run: Run) -> dict:
    """The manifest's job of the bundle the run ran, with its "params" ({} when none) and its dataset
    names under "datasets" ([] when none); just those when the run holds no job (a run folder from
    elsewhere). The copy in the run's job is what the sites ran, while the bundle folder may have been
    rebuilt since. Raises CaiaError, one line, for a copy whose job, params or datasets are not objects."""
    found = sorted((run.path / "job").glob("*/custom/manifest.json"))
    manifest = read_json(found[0]) if found else {}
    job, datasets = manifest.get("job") or {}, manifest.get("datasets") or {}
    params = job.get("params") or {} if isinstance(job, dict) else None
    if not isinstance(job, dict) or not isinstance(params, dict) or not isinstance(datasets, dict):
        raise CaiaError(f"{found[0]} is not a manifest caia wrote (its job, params or datasets are not objects); "
                        "log a run folder caia wrote")
    return {**job, "params": params, "datasets": sorted(datasets)}


def tags(run: Run, status: str) -> dict[str, str]:
    found = {"caia.bundle_id": run.bundle_id, "caia.target": run.target,
             "caia.status": status, "caia.run": run.path.name, "mlflow.note.content": run.headline}
    if status != "finished":
        found["caia.partial"] = "true"
    return found


def metrics(run: Run) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp in ms, step) for each site's records (site/<site>/<name>) and the global
    means (global/<name>), values present only: a site's key never is a global one, whatever its name."""
    rows = [(f"site/{r.site}/{r.name}", r.value, int(r.time * 1000), r.round) for r in run.records() if r.value is not None]
    stamp = max((row[2] for row in rows), default=0)
    rows += [(f"global/{name}", value, stamp, round) for round, name, value in run.global_metrics() if value is not None]
    return rows


@contextmanager
def _file_store_allowed(uri: str):
    """MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true: allow it while logging to one."""
    if not uri.startswith("file:"):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before
