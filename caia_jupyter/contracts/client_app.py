"""The NVFLARE client app a bundle becomes at a site, and the way back.

A bundle carries its NVFLARE client config (`config_fed_client.json`, covered by the id):
the app a site deploys is the bundle's files under `custom/` plus that config under
`config/`, so the guard can recompute the bundle id from exactly what was deployed.

A bundle whose manifest asks for encryption (`job.encryption` "he-ckks") carries the variant with
NVFLARE's homomorphic-encryption filters: the site decrypts the global model it receives
(HEModelDecryptor, train and validate) and encrypts its update, weighted by its number of
samples, before it leaves (HEModelEncryptor, train), with the TenSEAL context NVFLARE's
provisioning put in the site's startup kit.

The configs are those NVFLARE's FedJob API writes (`export_client_config`), one per manifest
`job.updates` x `job.encryption`, kept in `client_configs.json` beside this module: building and
verifying a bundle then never import NVFLARE (about 0.5 s). tests/test_client_app.py checks that
file against FedJob's output and names the command that writes it again.
"""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

from .errors import ContractError
from .privacy import ENCRYPTIONS

CLIENT_CONFIG = "config_fed_client.json"  # NVFLARE's name for a client app's config
TASKS = ("train", "validate")
UPDATES = (None, "weight_diff")  # what sites send back (manifest job.updates): full weights, or their difference
HE_CKKS = ENCRYPTIONS[0]  # the manifest's job.encryption for NVFLARE's TenSEAL CKKS filters
# Files NVFLARE itself may add to a deployed app; they carry no code of the bundle.
FLARE_FILES = {".__nvfl_sig.json", ".__nvfl_submitter.crt"}  # a job's signature, in every folder


def add_site_app(job, site: str, updates: str | None = None, encryption: str | None = None) -> None:
    """The client side of a caia job: the bundle's runner under NVFLARE's Client API, metrics forwarded.
    Weights travel as numpy arrays both ways: caia converts them at the site (`contracts.tensors`),
    as NVFLARE's own torch conversion cannot (bfloat16) and would pass non-tensor entries on.
    `updates` (one of UPDATES): "weight_diff" makes NVFLARE's Client API send each site's weights'
    difference from the global model it received (params_transfer_type DIFF), which privacy filters
    such as PercentilePrivacy act on. `encryption` "he-ckks" adds NVFLARE's HE filters (module
    docstring); raises ContractError, one line, when TenSEAL is not installed."""
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
    from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
    from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
    from nvflare.client.config import TransferType

    if updates not in UPDATES:
        raise ValueError(f"updates {updates!r} is not one of {UPDATES}")
    transfer = {"params_transfer_type": TransferType.DIFF} if updates == "weight_diff" else {}
    executor = ClientAPIExecutor(task_script_path="caia_runner.py", execution_mode="in_process", params_exchange_format="numpy",
                                 **transfer)
    job.to(executor, site, tasks=list(TASKS))
    job.to(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), site, id="event_to_fed")
    if encryption == HE_CKKS:
        require_tenseal()
        from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
        from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
        from nvflare.job_config.defs import FilterType

        job.to(HEModelDecryptor(), site, tasks=list(TASKS), filter_type=FilterType.TASK_DATA)
        # weighted by num_samples (NUM_STEPS_CURRENT_ROUND) before encryption: the server divides the sum
        job.to(HEModelEncryptor(weigh_by_local_iter=True), site, tasks=["train"], filter_type=FilterType.TASK_RESULT)
    elif encryption is not None:
        raise ContractError(f"encryption {encryption!r} is not one caia knows; a bundle may ask for {HE_CKKS!r}")


def require_tenseal() -> None:
    """Raise ContractError, one line naming the fix, unless TenSEAL (caia's `he` extra) is installed."""
    try:
        import tenseal  # noqa: F401
    except ImportError:
        raise ContractError("encrypted aggregation (encryption=he) needs TenSEAL, which is not installed; "
                            "pip install 'caia-jupyter[he]'") from None


CONFIGS_FILE = Path(__file__).with_name("client_configs.json")


def config_key(updates: str | None, encryption: str | None) -> str:
    """The key of a config in CONFIGS_FILE: "<updates or weights>/<encryption or clear>"."""
    return f"{updates or 'weights'}/{encryption or 'clear'}"


@cache
def _configs() -> dict:
    return json.loads(CONFIGS_FILE.read_text(encoding="utf-8"))


def client_config(updates: str | None = None, encryption: str | None = None) -> bytes:
    """The client config NVFLARE's FedJob API writes for `add_site_app` (with the manifest's
    `job.updates` and `job.encryption`), as bundle bytes, read from CONFIGS_FILE. Raises
    ValueError for updates not in UPDATES, ContractError (one line) for an encryption caia does
    not know, or for "he-ckks" when TenSEAL is not installed."""
    if updates not in UPDATES:
        raise ValueError(f"updates {updates!r} is not one of {UPDATES}")
    if encryption == HE_CKKS:
        require_tenseal()
    elif encryption is not None:
        raise ContractError(f"encryption {encryption!r} is not one caia knows; a bundle may ask for {HE_CKKS!r}")
    return _bytes(_configs()[config_key(updates, encryption)])


def export_client_config(updates: str | None = None, encryption: str | None = None) -> bytes:
    """What `client_config` returns, written afresh by NVFLARE's FedJob API (imports NVFLARE)."""
    from nvflare.job_config.api import FedJob

    job = FedJob(name="caia")
    add_site_app(job, "site", updates=updates, encryption=encryption)
    with tempfile.TemporaryDirectory() as out:
        job.export_job(out)
        config = json.loads((Path(out) / "caia" / "app_site" / "config" / CLIENT_CONFIG).read_text())
    return _bytes(config)


def write_client_configs() -> None:
    """Write CONFIGS_FILE afresh from FedJob's output (after an NVFLARE upgrade changes it)."""
    configs = {config_key(u, e): json.loads(export_client_config(u, e)) for u in UPDATES for e in (None, HE_CKKS)}
    CONFIGS_FILE.write_text(json.dumps(configs, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _bytes(config: dict) -> bytes:
    return (json.dumps(canonical(config), indent=2, sort_keys=True) + "\n").encode()


def canonical(config: dict) -> dict:
    """`config` (a parsed client config) with each filter's task list sorted: FedJob writes them from
    a set, in an order that changes from one Python process to the next; NVFLARE reads them as a set."""
    for kind in ("task_data_filters", "task_result_filters"):
        for chain in config.get(kind, []):
            chain["tasks"] = sorted(chain["tasks"])
    return config


STATISTICS_CONFIG_FILE = Path(__file__).with_name("statistics_config.json")
STATISTICS_TASKS = ("fed_stats_pre_run", "fed_stats")  # NVFLARE's StatisticsController's tasks


def statistics_config() -> bytes:
    """The client config of every statistics bundle, as bundle bytes: NVFLARE's StatisticsExecutor
    over caia's statistics generator, and caia's result filter applying NVFLARE's cleansers with the
    site's own thresholds (`site.statistics`), as NVFLARE's FedJob API writes it (read from
    STATISTICS_CONFIG_FILE; `site.statistics.write_statistics_config` writes it afresh)."""
    return _bytes(json.loads(STATISTICS_CONFIG_FILE.read_text(encoding="utf-8")))


def app_path(bundle_path: str) -> str:
    """Where a bundle file lives in a deployed NVFLARE app."""
    return f"config/{CLIENT_CONFIG}" if bundle_path == CLIENT_CONFIG else f"custom/{bundle_path}"
