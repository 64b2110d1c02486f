"""The NVFLARE internals the simulator target replaces or relies on, checked against the installed NVFLARE.

NVFLARE's simulator calls no app validator and has no setting for how it starts site workers or
for its fixed waits, so `simulator` and `tuning` change it by name: a `SimulatorRunner` subclass
overriding `_deploy_apps`, `setup` and `run_process`, module globals (`time`, `subprocess`) and a
few attributes replaced (a simulated site's scope lookup among them), and text of NVFLARE's code they count on (the worker's command line, an
optional import). The aggregator's metrics receiver uses `AnalyticsReceiver`'s lock. An NVFLARE
that renamed or reshaped any of these would change the simulator without a word, so the simulator's
launcher calls `check()` before it changes anything: names exist, signatures and texts are as in
NVFLARE VERIFIED, the version pyproject.toml pins, or the run stops with one line naming both
versions. The check imports NVFLARE's simulator modules only (no torch).
"""

from __future__ import annotations

import importlib
import inspect

from ..contracts.errors import FlareError
from .tuning import WORKER_MODULE

VERIFIED = "2.9.0"
_RUNNER = "nvflare.private.fed.app.simulator.simulator_runner"

# Called or overridden -> its signature in NVFLARE VERIFIED.
SIGNATURES = {
    f"{_RUNNER}:SimulatorRunner.__init__": "(self, job_folder: str, workspace: str, clients=None, n_clients=None, "
                                           "threads=None, gpu=None, log_config=None, max_clients=100, end_run_for_all=False)",
    f"{_RUNNER}:SimulatorRunner._deploy_apps": "(self, job_name, data_bytes, meta, log_config_file_path)",
    f"{_RUNNER}:SimulatorRunner.setup": "(self)",
    f"{_RUNNER}:SimulatorRunner.run_process": "(self, return_dict)",
    f"{_RUNNER}:SimulatorRunner.simulator_run_main": "(self)",
    f"{_RUNNER}:SimulatorRunner.run": "(self)",
    "nvflare.fuel.f3.mpm:MainProcessMonitor.run": "(main_func, run_dir=None, shutdown_grace_time=3, cleanup_grace_time=3, **kwargs)",
    "nvflare.private.fed.utils.fed_utils:get_simulator_app_root": "(simulator_root, site_name)",
    "nvflare.widgets.fed_event:FedEventRunner.__init__": "(self, topic='fed.event', regular_interval=0.01, grace_period=2.0, "
                                                         "queue_empty_period=2.0)",
    f"{WORKER_MODULE}:main": "(args)",
    "nvflare.private.fed.simulator.simulator_app_runner:SimulatorClientRunManager.create_job_processing_context_properties":
        "(self, workspace: nvflare.apis.workspace.Workspace, job_id)",
    "nvflare.private.fed.client.client_run_manager:ClientRunManager.create_job_processing_context_properties":
        "(self, workspace, job_id)",
    f"{WORKER_MODULE}:parse_arguments": "()",
    f"{WORKER_MODULE}:mpm.run": "(main_func, run_dir=None, shutdown_grace_time=3, cleanup_grace_time=3, **kwargs)",
}
# Replaced or read: each must exist.
ATTRIBUTES = (
    f"{_RUNNER}:time.sleep", f"{_RUNNER}:subprocess.Popen", "nvflare.fuel.f3.cellnet.core_cell:time.sleep",
    f"{WORKER_MODULE}:time.sleep", "nvflare.private.fed.client.client_runner:time.sleep", "nvflare.private.fed.tbi:time.sleep",
    "nvflare.fuel.f3.mpm:time.sleep", "nvflare.app_common.executors.client_api.in_process_backend:_RESULT_POLL_INTERVAL",
    "nvflare.fuel.common.exit_codes:ProcessExitCode.EXCEPTION",
)
# Code whose text caia counts on -> what it must say.
SOURCES = {
    _RUNNER: (f" -m {WORKER_MODULE} ", "subprocess.Popen("),  # how a worker starts: tuning.fork_workers forks it instead
    f"{_RUNNER}:SimulatorRunner": ("self.client_names =", "self.simulator_root =", "self.server =", "self.args.threads"),
    "nvflare.private.fed.server.fed_server:FederatedServer": ("self.check_engine_frequency = ",
                                                               "time.sleep(self.check_engine_frequency)"),
    "nvflare.widgets.fed_event:FedEventRunner.__init__": ("self.queue_empty_period = queue_empty_period",),
    "nvflare.private.fed.utils.fed_utils:create_job_processing_context_properties": (  # tuning.apply_site_scope
        "PrivacyService.get_scope(scope_name)", "FLContextKey.SCOPE_OBJECT: scope_object"),
    "nvflare.app_common.widgets.streaming:AnalyticsReceiver": ("self._save_lock = ", "with self._save_lock:\n"),
    "nvflare.apis.impl.wf_comm_server:WFCommServer._cleanup_inflight_tensor_downloads": (
        "from nvflare.app_opt.pt.tensor_downloader import", "except ImportError:"),  # tuning.tune_launcher blocks it
}


def check() -> None:
    """Raise FlareError, in one line naming the installed and the verified NVFLARE, if any internal
    listed here is missing or differs from NVFLARE VERIFIED; return None if all are as expected."""
    found = problems()
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise FlareError(f"the installed NVFLARE {_installed()} changed what caia's simulator relies on: {found[0]}{more}; "
                         f"caia was verified on NVFLARE {VERIFIED}, which pyproject.toml pins: pip install nvflare=={VERIFIED}")


def problems() -> list[str]:
    """What differs from NVFLARE VERIFIED, one short text each ([] if nothing)."""
    found = []
    for where, expected in SIGNATURES.items():
        thing = _find(where)
        if thing is None:
            found.append(f"{where} is gone")
            continue
        try:
            actual = str(inspect.signature(thing))
        except (TypeError, ValueError):
            actual = "(no signature)"
        if actual != expected:
            found.append(f"{where} takes {actual}, not {expected}")
    found += [f"{where} is gone" for where in ATTRIBUTES if _find(where) is None]
    for where, texts in SOURCES.items():
        thing = _find(where)
        try:
            source = inspect.getsource(thing) if thing is not None else None
        except (OSError, TypeError):
            source = None
        if source is None:
            found.append(f"{where} is gone")
            continue
        found += [f"{where} no longer says {text.strip()!r}" for text in texts if text not in source]
    return found


def _find(where: str):
    """The object at "module:dotted.attribute" (or the module itself), or None if there is none."""
    module_name, _, path = where.partition(":")
    try:
        thing = importlib.import_module(module_name)
        for name in path.split(".") if path else ():
            thing = getattr(thing, name)
    except (ImportError, AttributeError):
        return None
    return thing


def _installed() -> str:
    import nvflare

    return getattr(nvflare, "__version__", "of unknown version")
