"""`caia poc up | status | down`: a real NVFLARE deployment (server, site and admin processes) on
loopback, each site guarded by caia and given a caia site directory.

A caia POC workspace holds:

    caia-poc.json   marks the workspace as caia's; `down` never touches one without it
    nvflare/        NVFLARE's POC workspace (`nvflare poc prepare`): startup kits, local configs;
                    with `up --he`, each kit's TenSEAL context (`Poc.he`)
    sites/<name>/   each site's caia directory: data catalog, trusted reviewer keys, approvals
    reviewers/      each site's demo reviewer key pair (<name>.key, <name>.key.pub): never inside a site
    home/           the HOME NVFLARE's tools see, so the user's ~/.nvflare is left alone

NVFLARE's services outlive the command that starts them; `down` stops them and makes sure no
process of this workspace is left.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from ..contracts.client_app import require_tenseal
from ..contracts.errors import FlareError
from ..contracts.fsutil import write_json
from ..researcher.wording import plural
from ..site.privacy_policy import PRIVACY_FILE, install, read_policy

DEFAULT_POC = Path.home() / ".caia" / "poc"
MARKER = "caia-poc.json"
ADMIN = "admin@nvidia.com"
VALIDATOR = "caia_jupyter.site.guard.CaiaAppValidator"
HEARTBEAT_TIMEOUT = 30  # seconds before the server gives up on a silent site (NVFLARE's default: 600)
START_TIMEOUT = 180
PORTS = (8002, 8003)  # NVFLARE POC: server, admin
HE_CONTEXTS = {"server": "server_context.tenseal", "client": "client_context.tenseal"}  # NVFLARE's HEBuilder writes them


@dataclass(frozen=True)
class Poc:
    workspace: Path

    @property
    def state(self) -> dict:
        return json.loads((self.workspace / MARKER).read_text())

    @property
    def site_names(self) -> list[str]:
        return self.state["sites"]

    @property
    def nvflare_workspace(self) -> Path:
        return self.workspace / "nvflare"

    @property
    def he(self) -> bool:
        """Whether every startup kit holds its TenSEAL context: the server's public one (no secret
        key), each site's with the secret key (NVFLARE's HEBuilder, `up --he`)."""
        kits = [self.kits / "server" / "startup" / HE_CONTEXTS["server"]]
        kits += [self.kits / name / "startup" / HE_CONTEXTS["client"] for name in self.site_names]
        return all(path.is_file() for path in kits)

    def require_he(self, bundle_id: str) -> None:
        """Raise FlareError, one line, unless this POC can run a bundle asking for encryption."""
        if not self.he:
            raise FlareError(f"bundle {bundle_id} asks for encrypted aggregation (encryption=he), but the POC at "
                             f"{self.workspace} has no HE contexts; start it with `caia poc down` then `caia poc up --he`")

    @property
    def kits(self) -> Path:
        return self.nvflare_workspace / "example_project" / "prod_00"

    @property
    def admin_kit(self) -> Path:
        return self.kits / ADMIN

    def site_dir(self, name: str) -> Path:
        return self.workspace / "sites" / name

    def reviewer_key(self, name: str) -> Path:
        """The private key of site `name`'s demo reviewer: outside every site directory."""
        return self.workspace / "reviewers" / f"{name}.key"

    def environment(self) -> dict:
        env = dict(os.environ, NVFLARE_POC_WORKSPACE=str(self.nvflare_workspace), HOME=str(self.workspace / "home"))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # sites run this Python
        return env

    def nvflare(self, *args: str, timeout: float = 120, **output) -> subprocess.CompletedProcess:
        """`nvflare poc ARGS` for this workspace; its output captured unless `output` says where."""
        command = [str(Path(sys.executable).parent / "nvflare"), "poc", *args]
        return subprocess.run(command, env=self.environment(), stdin=subprocess.DEVNULL, timeout=timeout,
                              **(output or {"capture_output": True, "text": True}))

    def processes(self) -> list:
        """Every live process whose command line names this workspace (daemons first)."""
        import psutil

        found = []  # (command line, process): read once, as a process may end meanwhile
        for proc in psutil.process_iter(["pid", "cmdline"]):
            command = " ".join(proc.info["cmdline"] or ())
            try:
                if str(self.nvflare_workspace) in command and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append((command, proc))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return [proc for command, proc in sorted(found, key=lambda pair: "sub_start.sh" not in pair[0])]


def open_poc(workspace: str | Path) -> Poc:
    poc = Poc(Path(workspace).resolve())
    if not (poc.workspace / MARKER).is_file():
        raise FlareError(f"{poc.workspace} is not a caia POC workspace (no {MARKER}); start one with `caia poc up`")
    return poc


@contextmanager
def admin_session(admin_kit: Path, username: str = ADMIN, timeout: float = 10.0):
    """A Flare API session, always closed (an open one keeps a process from exiting)."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    logging.getLogger("nvflare").setLevel(logging.CRITICAL)  # its connection chatter is not for the researcher
    if not (Path(admin_kit) / "startup").is_dir():
        raise FlareError(f"{admin_kit} is not an NVFLARE admin startup kit (it has no startup/ folder); give the "
                         "folder your federation's project admin provisioned for you")
    try:
        with redirect_stdout(io.StringIO()):  # "Connecting to FLARE ..."
            session = new_secure_session(username, str(admin_kit), timeout=timeout)
    except Exception as e:  # NoConnection, AuthenticationError, a bad kit path...
        raise FlareError(f"cannot reach the NVFLARE server with the kit at {admin_kit}: {e}") from e
    try:
        yield session
    finally:
        session.close()


def up(workspace: str | Path, sites: int = 3, demo_data: bool = False, he: bool = False, say=print) -> Poc:
    """Provision and start a POC with `sites` guarded sites; returns when every site is connected.
    `he`: NVFLARE's provisioning also writes TenSEAL CKKS contexts into the startup kits (`Poc.he`);
    raises ContractError, one line, when TenSEAL is not installed."""
    if he:
        require_tenseal()
    poc = Poc(Path(workspace).resolve())
    if poc.workspace.exists() and any(poc.workspace.iterdir()) and not (poc.workspace / MARKER).exists():
        raise FlareError(f"{poc.workspace} exists and is not a caia POC workspace; choose an empty directory")
    if (poc.workspace / MARKER).exists() and poc.processes():
        raise FlareError(f"the POC at {poc.workspace} is already running; `caia poc down --workspace {poc.workspace}` first")
    if sites < 1:
        raise FlareError("--sites must be at least 1")
    busy = [port for port in PORTS if _listening(port)]
    if busy:
        raise FlareError(f"port {busy[0]} is in use (another NVFLARE POC?); stop it first, e.g. `caia poc down --workspace DIR`")
    if (poc.workspace / MARKER).exists():
        shutil.rmtree(poc.workspace)
    (poc.workspace / "home").mkdir(parents=True)
    names = [f"site-{i + 1}" for i in range(sites)]
    write_json(poc.workspace / MARKER, {"sites": names, "username": ADMIN})

    say(f"provisioning NVFLARE POC: server, {', '.join(names)}, admin kit" + (", HE contexts (TenSEAL CKKS)" if he else ""))
    prepared = poc.nvflare("prepare", "-n", str(sites), "--force", *(["--he"] if he else []))
    if prepared.returncode != 0:
        raise FlareError(f"nvflare poc prepare failed: {_tail(prepared)}")
    _create_sites(poc, names, demo_data)
    say(f"each site's demo reviewer key: {poc.workspace / 'reviewers'}/<site>.key (outside the site directories)")
    for name in names:
        _install_guard(poc, name)
    _bound_heartbeat(poc)

    say("starting the server and sites (each site's guard: caia)")
    with open(poc.workspace / "poc.log", "ab") as log:
        poc.nvflare("start", "--no-wait", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_connected(poc, names, say)
    except BaseException:
        down(poc.workspace, say=lambda *a: None)
        raise
    say(f"POC up: {plural(len(names), 'site')} connected; admin kit {poc.admin_kit}")
    return poc


def wait_until_connected(poc: Poc, names: list[str], say, timeout: float = START_TIMEOUT) -> None:
    deadline, seen, server_up, last = time.monotonic() + timeout, set(), False, ""
    while time.monotonic() < deadline:
        try:
            with admin_session(poc.admin_kit, timeout=3.0) as session:
                connected = {c.name for c in session.get_system_info().client_info}
            if not server_up:
                server_up = True
                say("  server up")
            for name in sorted(connected & set(names) - seen):
                say(f"  {name} connected")
            seen |= connected
            if set(names) <= connected:
                return
        except FlareError as e:
            last = str(e)
        time.sleep(1.0)
    missing = ", ".join(sorted(set(names) - seen)) or "the server"
    raise FlareError(f"the POC did not come up within {timeout:.0f} s ({missing} not connected; {last}); see {poc.workspace}/poc.log")


def status(workspace: str | Path) -> dict:
    poc = open_poc(workspace)
    running = bool(poc.processes())
    report = {"workspace": str(poc.workspace), "running": running, "sites": poc.site_names, "admin_kit": str(poc.admin_kit),
              "connected": [], "jobs": []}
    if running:
        with admin_session(poc.admin_kit, timeout=5.0) as session:
            info = session.get_system_info()
            report["connected"] = sorted(c.name for c in info.client_info)
            report["jobs"] = [{"job_id": j.job_id, "app_name": j.app_name} for j in info.job_info]
    return report


def down(workspace: str | Path, say=print) -> list[int]:
    """Stop every process of a caia POC; returns the PIDs that had to be killed."""
    poc = open_poc(workspace)
    if not poc.processes():
        say("POC is not running")
        return []
    say("stopping the POC (aborting running jobs first)")
    stopped = poc.nvflare("stop", timeout=120)
    if stopped.returncode != 0:  # e.g. a job left RUNNING by an unclean exit: stop each participant locally
        poc.nvflare("stop", "-p", "server", *[arg for name in poc.site_names for arg in ("-p", name)], timeout=120)
    killed = []
    if not _wait_gone(poc, 30):
        for proc in poc.processes():  # daemons first, so they cannot restart what we kill
            try:
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
            except Exception:
                pass
        if not _wait_gone(poc, 15):
            raise FlareError(f"processes of {poc.workspace} survive SIGKILL: {[p.pid for p in poc.processes()]}")
    say("POC down: no NVFLARE process left")
    return killed


def _wait_gone(poc: Poc, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not poc.processes():
            return True
        time.sleep(0.5)
    return False


def _create_sites(poc: Poc, names: list[str], demo_data: bool) -> dict[str, Path]:
    """Each site's caia directory, and a demo reviewer per site whose key lies in reviewers/,
    outside every site directory; returns site name -> reviewer key file."""
    from .demo_sites import add_reviewer, make_sites
    from ..site.sites import init

    if demo_data:
        made = make_sites(poc.workspace / "sites", len(names), reviewers=poc.workspace / "reviewers")
        return {center.site.name: center.reviewer_key for center in made}
    return {name: add_reviewer(init(poc.site_dir(name), name), poc.reviewer_key(name)) for name in names}


def _install_guard(poc: Poc, name: str) -> None:
    """The two-step change a center makes: caia installed, and its validator in local/resources.json.
    The site's privacy policy (its default scope alone, `privacy_policy.install`) goes into the
    site's local/privacy.json now, before the site starts and loads it, and again at each admission.
    Raises SiteError for an unusable privacy.json in the site directory."""
    local = poc.kits / name / "local"
    install(read_policy(poc.site_dir(name)), local / PRIVACY_FILE)
    resources = json.loads((local / "resources.json.default").read_text())
    resources["app_validator"] = {"path": VALIDATOR, "args": {"site_dir": str(poc.site_dir(name)),
                                                              "privacy_file": str(local / PRIVACY_FILE)}}
    write_json(local / "resources.json", resources)


def _bound_heartbeat(poc: Poc) -> None:
    local = poc.kits / "server" / "local"
    source = local / "resources.json" if (local / "resources.json").exists() else local / "resources.json.default"
    resources = json.loads(source.read_text())
    for server in resources.get("servers", []):
        server["heart_beat_timeout"] = HEARTBEAT_TIMEOUT
    write_json(local / "resources.json", resources)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _tail(result: subprocess.CompletedProcess) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[-1] if text else f"exit code {result.returncode}"
