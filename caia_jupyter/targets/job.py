"""Bundle -> NVFLARE job folder, with NVFLARE's FedJob API.

The server app holds only caia's components and the initial weights (computed here, on the
researcher's machine, by the bundle's own `build_model()`), and for a bundle asking for encryption
NVFLARE's HE aggregator (`aggregator.he`); each site's app is the bundle:
its files under custom/ and its client config under config/, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..aggregator.components import INITIAL_MODEL, CaiaFedAvg, MetricsReceiver, save_arrays
from ..contracts.client_app import add_site_app, app_path, canonical, require_tenseal
from ..contracts.errors import ContractError, FlareError
from ..contracts.fileset import CLIENT_CONFIG, MANIFEST, MODULE
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
    job = FedJob(name=name, min_clients=settings["min_clients"])
    job.to_server(_controller(settings, round_timeout, output_dir, job), id="controller")
    job.to_server(MetricsReceiver(output_dir), id="caia_metrics")
    if server_config:
        job.to_server(server_config)
    for site in sites:
        add_site_app(job, site, updates=settings.get("updates"), encryption=encryption)
    with tempfile.TemporaryDirectory() as staging:
        # Everything below reads a copy checked against the id: a rebuild of the bundle folder meanwhile
        # (a Validate of the edited notebook) cannot put another version into the job.
        bundle = checked_copy(bundle, Path(staging) / ".bundle")
        job.export_job(staging)
        folder = Path(staging) / name
        server_custom = folder / "app_server" / "custom"
        server_custom.mkdir(parents=True, exist_ok=True)
        initial_weights(bundle, server_custom / INITIAL_MODEL)
        expected = json.loads(bundle.source(CLIENT_CONFIG))
        for site in sites:
            app = folder / f"app_{site}"
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
