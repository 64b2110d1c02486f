"""Simulator-only speed: how NVFLARE's simulator starts site workers, and how long it waits.

Public settings cover the server's task polling (`task_request_interval`) and how often it
checks that a run may end (`end_run_readiness_check_interval`), in the simulator job only; the
launcher keeps one long-lived worker per site. Two things have no setting, so caia changes them
in the simulator alone (POC and production sites are untouched):

- Starting a worker. NVFLARE starts each site's worker as a fresh `python -m simulator_worker`,
  and every one of them imports NVFLARE, torch and pandas again (about 4 s of CPU each). caia
  forks the workers instead from a fork server that imported those once, while the simulator
  was deploying; each worker then runs NVFLARE's worker as a fresh process would. Each worker
  first forks, while it is still one thread, the process its sandbox will use (`sandbox.prefork`),
  so the site's sandboxed process imports nothing either.
- Fixed waits meant for real networks, shortened to STEP: in the launcher, the 1 s sleeps of
  `simulator_runner` (server start, client start, worker connect), the 3 s shutdown grace and
  server status poll, the server cell's 0.5 s message batching, and a torch import at the end of
  the run; in each worker, the 0.5 s Client API result poll, the client's 0.5 s sync, task and
  end-of-run polls, the 0.5 s task-retry sleep of `simulator_worker`, and the 3 s + 2 s waits
  before it exits. And a run may end once no metric has arrived for QUIET, not 2 s.

One more change is not about speed: each worker applies its site's privacy scope (`apply_site_scope`),
which NVFLARE's simulator loads but never applies.

Each simulated site also gets one CPU thread for torch (the sites share this machine's cores).
Every NVFLARE internal changed here is checked against the installed NVFLARE first (`nvflare_internals`).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from ..site.sandbox import ForkedProcess

STEP = 0.05  # seconds: the longest fixed wait left in a simulated run
QUIET = 0.25  # seconds without a metric after which a simulated run may end (NVFLARE waits 2 s)
SERVER_CONFIG = {"server": {"task_request_interval": STEP}, "end_run_readiness_check_interval": STEP}
WORKER_MODULE = "nvflare.private.fed.app.simulator.simulator_worker"
# What every worker imports before its first round: NVFLARE's worker and Client API, caia's
# runtime, torch (with the compiler stack its optimizers load on first use) and pandas.
PRELOAD = [WORKER_MODULE, "nvflare.client", "nvflare.client.tracking", "nvflare.app_common.executors.client_api.in_process_backend",
           "caia_jupyter.site.flare_client", "caia_jupyter.site.context", "torch", "torch.optim", "torch._dynamo", "pandas"]


def short_sleeps(namespace: dict) -> None:
    """Make the module whose globals are `namespace` wait at most STEP in time.sleep."""
    namespace["time"] = SimpleNamespace(**{**vars(time), "sleep": lambda seconds: time.sleep(min(seconds, STEP))})


def shorter_quiet_period() -> None:
    """Before a run may end, NVFLARE waits until no metric (fed event) has arrived for 2 s, in case
    one is still on its way over a real network; on one machine, none is in flight that long."""
    from nvflare.widgets.fed_event import FedEventRunner

    init = FedEventRunner.__init__

    def quiet_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.queue_empty_period = QUIET

    FedEventRunner.__init__ = quiet_init


def tune_launcher() -> None:
    """In the launcher, before the simulator starts its server and workers."""
    from nvflare.fuel.f3.cellnet import core_cell
    from nvflare.private.fed.app.simulator import simulator_runner

    os.environ["OMP_NUM_THREADS"] = "1"
    short_sleeps(vars(simulator_runner))
    short_sleeps(vars(core_cell))
    shorter_quiet_period()
    # At the end of a run NVFLARE's server imports this (and with it torch, ~1.3 s) only to cancel
    # torch tensor downloads; a caia server holds numpy arrays only, so there are none to cancel.
    sys.modules["nvflare.app_opt.pt.tensor_downloader"] = None


def fork_workers(runner_module) -> None:
    """Make `runner_module` (NVFLARE's simulator_runner) fork its site workers from a fork server
    that has imported PRELOAD, with the command line, environment, working directory and new
    session its `subprocess.Popen` would have given them.

    Call it in the simulator's process before it deploys: the fork server imports meanwhile.
    """
    from multiprocessing import forkserver

    forks = multiprocessing.get_context("forkserver")
    forks.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    base_path = [p for p in sys.path[1:] if p not in inherited]  # sys.path[0]: the launcher's directory

    def popen(args, env=None, **kwargs):
        if WORKER_MODULE not in args:
            return subprocess.Popen(args, env=env, **kwargs)
        argv = args[args.index(WORKER_MODULE) + 1:]
        process = forks.Process(target=run_worker, args=(argv, env, base_path), name=WORKER_MODULE)
        process.start()
        return ForkedProcess(process)

    vars(runner_module)["subprocess"] = SimpleNamespace(**{**vars(subprocess), "Popen": popen})


def apply_site_scope() -> None:
    """Make a simulated site apply its privacy scope, as a deployed NVFLARE client does. NVFLARE's
    simulated client loads the site's local/privacy.json but looks up no scope for the job
    (`SimulatorClientRunManager` keeps only the job's meta), so its filters would never run; here it
    looks the scope up with the deployed client's own method (the job's scope, else the default)."""
    from nvflare.private.fed.client.client_run_manager import ClientRunManager
    from nvflare.private.fed.simulator.simulator_app_runner import SimulatorClientRunManager

    SimulatorClientRunManager.create_job_processing_context_properties = ClientRunManager.create_job_processing_context_properties


def run_worker(argv: list[str], env: dict, base_path: list[str]) -> None:
    """In a forked worker: do what `python -m WORKER_MODULE ARGV` does, with environment `env`."""
    import torch
    from nvflare.app_common.executors.client_api import in_process_backend
    from nvflare.fuel.f3 import mpm
    from nvflare.private.fed import tbi
    from nvflare.private.fed.app.simulator import simulator_worker as worker
    from nvflare.private.fed.client import client_runner

    from ..site import sandbox

    os.setsid()
    sandbox.prefork()  # while this worker is one thread, before it learns anything of its site
    os.environ.clear()
    os.environ.update(env)
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *python_path, *base_path]
    sys.argv = [worker.__file__, *argv]
    torch.set_num_threads(1)
    in_process_backend._RESULT_POLL_INTERVAL = STEP
    for module in (worker, client_runner, tbi, mpm):
        short_sleeps(vars(module))
    shorter_quiet_period()
    apply_site_scope()
    args = worker.parse_arguments()  # the rest is the worker module's `__main__` block
    worker.mpm.run(main_func=worker.main, run_dir=args.workspace, args=args)
