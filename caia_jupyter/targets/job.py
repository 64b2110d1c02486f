"""Bundle -> NVFLARE job folder, with NVFLARE's FedJob API.

A statistics bundle (`job.statistics`) becomes NVFLARE's statistics job instead: its
StatisticsController and JSON writer on the server, and at each site the bundle's client config
(`site.statistics`).

Otherwise the server app holds only caia's components and the initial weights (computed here, on the
researcher's machine, by the bundle's own `build_model()`), and for a bundle asking for encryption
NVFLARE's HE aggregator (`aggregator.he`); each site's app is the bundle:
its files under custom/ and its client config under config/, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..aggregator.components import INITIAL_MODEL, STATISTICS_FILE, CaiaFedAvg, MetricsReceiver, save_arrays
from ..contracts.client_app import add_site_app, app_path, canonical, require_tenseal
from ..contracts.errors import ContractError, FlareError
from ..contracts.fileset import CLIENT_CONFIG, MANIFEST, MODULE, is_statistics
from ..contracts.fsutil import write_json
from ..contracts.weights import DTYPES_FILE
from ..researcher.bundle import Bundle, checked_copy


def initial_weights(bundle: Bundle, destination: Path) -> Path:
    """Save `build_model().state_dict()` of the bundle's own code as the first global model, and
    beside it (DTYPES_FILE) each entry's dtype, which the global model keeps (`contracts.weights`).
    Raises ContractError, one line naming the entry, for a state_dict caia cannot average (for weight
    differences, a bool entry too)."""
    from ..contracts.tensors import dtypes_of, to_arrays
    from ..site.runtime import build_model, load_entry_points

    state = build_model(load_entry_points(bundle.path, bundle.manifest["files"][MODULE]["sha256"])).state_dict()
    dtypes = dtypes_of(state, "build_model")
    booleans = [name for name, dtype in dtypes.items() if dtype == "bool"]
    if booleans and bundle.manifest["job"].get("updates") == "weight_diff":
        raise ContractError(f"build_model()'s entry {booleans[0]!r} is bool, which has no weight difference; "
                            "register it as a buffer with persistent=False, or drop updates=weight_diff")
    save_arrays(to_arrays(state, "build_model"), destination)
    write_json(destination.parent / DTYPES_FILE, dtypes)
    return destination


def _controller(settings: dict, round_timeout: int, output_dir: str, job):
    """caia's FedAvg; for a bundle asking for encryption, over ciphertexts with NVFLARE's HE aggregator
    (added to `job` as component "aggregator"; `aggregator.he`)."""
    args = (settings["rounds"], settings["min_clients"], round_timeout, output_dir)
    if not settings.get("encryption"):
        return CaiaFedAvg(*args, settings.get("updates"))
    require_tenseal()
    from nvflare.apis.dxo import DataKind
    from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator

    from ..aggregator.he import CaiaHEFedAvg

    # the sites weigh their update by num_samples before they encrypt it; the aggregator divides the sum
    job.to_server(HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=False),
                  id="aggregator")
    return CaiaHEFedAvg(*args, aggregator_id="aggregator")


def statistic_configs(spec: dict) -> dict:
    """NVFLARE StatisticsController's `statistic_configs` for a manifest's `job.statistics`: each
    statistic asked, count always and sum with a mean or standard deviation (the pooled ones rest on them)."""
    configs = {"count": {}, **{name: {} for name in spec["statistics"]}}
    if "mean" in configs or "stddev" in configs:
        configs["sum"] = {}  # NVFLARE pools a mean from the sites' sums (count x mean: nothing more is released)
    if "histogram" in configs:
        configs["histogram"] = {column: {"bins": h["bins"], **({"range": list(h["range"])} if h.get("range") else {})}
                                for column, h in spec["histograms"].items()}
    if "quantile" in configs:
        configs["quantile"] = {"*": list(spec["quantiles"])}
    return configs


def _statistics_server(job, settings: dict) -> None:
    """NVFLARE's StatisticsController and JSON writer (as its StatsJob sets them up), writing STATISTICS_FILE
    in the server's job folder (`collect_statistics` copies it into the run folder)."""
    from nvflare.app_common.statistics.json_stats_file_persistor import JsonStatsFileWriter
    from nvflare.app_common.workflows.statistics_controller import StatisticsController

    from ..site.statistics import PRECISION

    job.to_server(StatisticsController(statistic_configs(settings["statistics"]), writer_id="caia_stats_writer",
                                       precision=PRECISION, min_clients=settings["min_clients"],
                                       enable_pre_run_task=False), id="controller")
    job.to_server(JsonStatsFileWriter(output_path=STATISTICS_FILE,  # in the job's folder (NVFLARE's rule); collected
                                      json_encoder_path="nvflare.app_common.utils.json_utils.ObjectEncoder"),
                  id="caia_stats_writer")


def collect_statistics(workspace: Path, output_dir: Path) -> Path | None:
    """Copy the STATISTICS_FILE NVFLARE's writer left in the server's job folder under `workspace`
    to `output_dir`; returns the copy, None when there is none."""
    found = sorted((workspace / "server").rglob(STATISTICS_FILE)) if (workspace / "server").is_dir() else []
    if not found:
        return None
    return Path(shutil.copyfile(found[0], output_dir / STATISTICS_FILE))


def build_job(bundle: Bundle, sites: list[str], destination: Path, name: str, output_dir: str = "",
              round_timeout: int = 0, server_config: dict | None = None) -> Path:
    """Write the NVFLARE job for `bundle` at `sites` to `destination`; returns the job folder.

    `output_dir` is where the server writes metrics, status and the global model (default:
    the job's run directory in the server's workspace). The initial weights and every file of the
    site apps come from one copy of the bundle folder checked against `bundle.id`; raises BundleError,
    one line, when the folder no longer holds that id.
    """
    from nvflare.job_config.api import FedJob

    settings = bundle.manifest["job"]
    encryption = settings.get("encryption")
    statistics = is_statistics(settings)
    job = FedJob(name=name, min_clients=settings["min_clients"])
    if statistics:
        from ..site.statistics import add_statistics_app

        _statistics_server(job, settings)
    else:
        job.to_server(_controller(settings, round_timeout, output_dir, job), id="controller")
        job.to_server(MetricsReceiver(output_dir), id="caia_metrics")
    if server_config:
        job.to_server(server_config)
    for site in sites:
        if statistics:
            add_statistics_app(job, site)
        else:
            add_site_app(job, site, updates=settings.get("updates"), encryption=encryption)
    with tempfile.TemporaryDirectory() as staging:
        # Everything below reads a copy checked against the id: a rebuild of the bundle folder meanwhile
        # (a Validate of the edited notebook) cannot put another version into the job.
        bundle = checked_copy(bundle, Path(staging) / ".bundle")
        job.export_job(staging)
        folder = Path(staging) / name
        if not statistics:  # a statistics bundle has no model
            server_custom = folder / "app_server" / "custom"
            server_custom.mkdir(parents=True, exist_ok=True)
            initial_weights(bundle, server_custom / INITIAL_MODEL)
        expected = json.loads(bundle.source(CLIENT_CONFIG))
        for site in sites:
            app = folder / f"app_{site}"
            if statistics:  # FedJob copies caia's generator module into custom/; the site runs its installed caia
                shutil.rmtree(app / "custom", ignore_errors=True)
            if canonical(json.loads((app / "config" / CLIENT_CONFIG).read_text())) != expected:
                raise FlareError(f"this NVFLARE writes a different client config than bundle {bundle.short_id} carries; "
                                 "rebuild the bundle with this caia-jupyter and NVFLARE")
            for file in [*bundle.manifest["files"], MANIFEST]:
                target = app / app_path(file)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle.path / file, target)
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(folder, destination)
    return destination
