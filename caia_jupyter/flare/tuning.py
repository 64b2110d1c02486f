"""Simulator-only timing: NVFLARE's simulator waits in fixed steps meant for real networks.

Public settings cover the server's task polling (`task_request_interval`) and how often it
checks that a run may end (`end_run_readiness_check_interval`), in the simulator job only, and how workers run (one long-lived in-process worker per site). The rest are
constants with no setting, so caia shortens them where it runs them, in the simulator alone:

- launcher: the 1 s sleeps of `simulator_runner` (server start, client start, worker connect),
  the 3 s shutdown grace, the 3 s server status poll, and a torch import at the end of the run;
- each site's worker (from the caia runtime): the 0.5 s Client API result poll, the 0.5 s
  task-retry sleep of `simulator_worker` and its 3 s + 2 s waits before it exits.

Each simulated site also gets one CPU thread for torch (the sites share this machine's cores).
POC and production sites are untouched: the launcher marks its workers with CAIA_SIMULATOR=1.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace

STEP = 0.05  # seconds: the longest fixed wait left in a simulated run
SERVER_CONFIG = {"server": {"task_request_interval": STEP}, "end_run_readiness_check_interval": STEP}
WORKER_MODULE = "nvflare.private.fed.app.simulator.simulator_worker"
MARK = "CAIA_SIMULATOR"


def short_sleeps(namespace: dict) -> None:
    """Make the module whose globals are `namespace` wait at most STEP in time.sleep."""
    namespace["time"] = SimpleNamespace(**{**vars(time), "sleep": lambda seconds: time.sleep(min(seconds, STEP))})


def tune_launcher() -> None:
    """In the launcher, before the simulator starts its workers (they inherit the environment)."""
    from nvflare.private.fed.app.simulator import simulator_runner

    os.environ.update({MARK: "1", "OMP_NUM_THREADS": "1"})
    short_sleeps(vars(simulator_runner))
    # At the end of a run NVFLARE's server imports this (and with it torch, ~1.3 s) only to cancel
    # torch tensor downloads; a caia server holds numpy arrays only, so there are none to cancel.
    sys.modules["nvflare.app_opt.pt.tensor_downloader"] = None


def tune_worker(api_context) -> None:
    """Called by the caia runtime after flare.init(); does nothing outside a caia simulator worker."""
    if os.environ.get(MARK) != "1":
        return
    import torch
    from nvflare.app_common.executors.client_api import in_process_backend
    from nvflare.fuel.f3 import mpm

    torch.set_num_threads(1)
    short_sleeps(vars(mpm))  # its shutdown grace, once the run has ended
    in_process_backend._RESULT_POLL_INTERVAL = STEP
    if hasattr(api_context.api, "result_check_interval"):
        api_context.api.result_check_interval = STEP
    # The worker's loop runs in the main thread, in the module `python -m` started (runpy has
    # swapped sys.modules["__main__"] for the trainer script meanwhile): find it by its frames.
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        spec = frame.f_globals.get("__spec__")
        if spec is not None and spec.name == WORKER_MODULE:
            short_sleeps(frame.f_globals)
            break
        frame = frame.f_back
