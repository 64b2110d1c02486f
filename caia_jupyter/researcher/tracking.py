"""Log a run to MLflow, after the fact, from its run directory (`caia mlflow RUN`, `%federated mlflow RUN`).

One MLflow run per call, in experiment "caia" by default, at the tracking URI given, or else in the
folder `mlruns` beside the run's runs folder (a `file:` URI; MLflow 3 serves that store only with
MLFLOW_ALLOW_FILE_STORE=true, which is set while logging to it). What it holds:

    params     param.<name> (the bundle's job params), rounds, min_clients, datasets, target,
               privacy.<key> (the differential privacy request, if any), encryption (if any)
    metrics    <site>/<name> per round (step = the round; the final evaluation's step is the run's
               rounds), global/<name> per round (`runs.global_metrics`); a missing value is not logged
    artifacts  global_model.pt and its guarantee (global_model.guarantee.json), once the run ended with one
    tags       caia.bundle_id, caia.target, caia.status, caia.run (the run folder's name); a run not
               finished also has caia.partial = "true" and its MLflow status says how it ended
               (FAILED, KILLED, or RUNNING while it is live: log it again once it ends)

NVFLARE's own MLflowReceiver (nvflare.app_opt.tracking.mlflow) is not used: it must be configured into
the job before the sites approve it and logs live from the server, while this logs any run, after the
fact, from caia's filtered records, to a tracking server of the researcher's choice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from ..contracts.errors import CaiaError
from ..contracts.fsutil import read_json
from .runs import Run

DEFAULT_EXPERIMENT = "caia"
INSTALL = "pip install 'caia-jupyter[mlflow]'"
BATCH = 1000  # MLflow's most metrics in one log_batch
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "refused": "FAILED", "aborted": "KILLED"}


@dataclass(frozen=True)
class Logged:
    """Where a run went: MLflow's tracking URI, experiment name, run id; the caia run's status, and
    whether it was logged before it finished (`partial`)."""

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

    Raises CaiaError, one line, when MLflow is not installed, or when the tracking store refuses or
    cannot be reached; then the MLflow run begun, if any, is deleted, so nothing half-logged stays."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise CaiaError(f"MLflow is not installed; install it with: {INSTALL}") from None
    uri = tracking_uri or default_tracking_uri(run)
    experiment = experiment or DEFAULT_EXPERIMENT
    status = run.status
    partial = status != "finished"
    with _file_store_allowed(uri):
        client, run_id = MlflowClient(uri), None
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run_id = client.create_run(experiment_id, run_name=run.path.name).info.run_id
            client.log_batch(run_id, params=[Param(k, v) for k, v in params(run).items()],
                             tags=[RunTag(k, v) for k, v in tags(run, status).items()])
            rows = metrics(run)
            for start in range(0, len(rows), BATCH):
                client.log_batch(run_id, metrics=[Metric(key, value, stamp, step)
                                                  for key, value, stamp, step in rows[start:start + BATCH]])
            for artifact in (run.global_model, run.guarantee_file) if status in MLFLOW_STATUS else ():
                if artifact:
                    client.log_artifact(run_id, str(artifact))
            if status in MLFLOW_STATUS:
                client.set_terminated(run_id, MLFLOW_STATUS[status])
        except Exception as e:  # MlflowException, a server that is down: the store's own words, on one line
            if run_id:
                try:
                    client.delete_run(run_id)
                except Exception:
                    pass  # the store is gone: there is nothing to clean up there
            reason = " ".join(str(e).split())[:300]
            raise CaiaError(f"MLflow at {uri} refused the run ({type(e).__name__}: {reason}); "
                            "check --tracking-uri and that the tracking server runs") from e
    return Logged(uri, experiment, run_id, status, partial)


def params(run: Run) -> dict[str, str]:
    """The MLflow params of a run: its bundle's job (from the job the sites ran) and its settings."""
    job = job_of(run)
    found = {f"param.{name}": value for name, value in (job.get("params") or {}).items()}
    found.update(rounds=run.spec["rounds"], min_clients=run.spec.get("min_clients"), target=run.spec.get("target"),
                 datasets=",".join(sorted(job.get("datasets") or [])))
    privacy = run.spec.get("privacy") if isinstance(run.spec.get("privacy"), dict) else {}
    found.update({f"privacy.{key}": value for key, value in privacy.items()})
    if job.get("encryption"):
        found["encryption"] = job["encryption"]
    return {key: str(value) for key, value in found.items() if value is not None and value != ""}


def job_of(run: Run) -> dict:
    """The manifest's job of the bundle the run ran, with its dataset names under "datasets"; {} when
    the run holds no job (a run folder from elsewhere). The copy in the run's job is what the sites
    ran, while the bundle folder may have been rebuilt since."""
    manifest = next((read_json(p) for p in sorted((run.path / "job").glob("*/custom/manifest.json"))), {})
    job = manifest.get("job") if isinstance(manifest.get("job"), dict) else {}
    return {**job, "datasets": list(manifest.get("datasets") or [])}


def tags(run: Run, status: str) -> dict[str, str]:
    found = {"caia.bundle_id": str(run.spec.get("bundle_id", "")), "caia.target": str(run.spec.get("target", "")),
             "caia.status": status, "caia.run": run.path.name, "mlflow.note.content": run.headline}
    if status != "finished":
        found["caia.partial"] = "true"
    return found


def metrics(run: Run) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp in ms, step) for each site's records and the global means, values present only."""
    rows = [(f"{r.site}/{r.name}", r.value, int(r.time * 1000), r.round) for r in run.records() if r.value is not None]
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
