"""The site's side of the sandbox: approved code runs in a process of its own, fenced in by the kernel.

A site's policy (site.json `policy.sandbox`, one of `sites.SANDBOX_POLICIES`) says where approved code runs:

    required   in a sandboxed process, restricted with Linux Landlock; where the kernel has no
               Landlock the site refuses the bundle (the default of POC and production sites)
    preferred  the same, and where the kernel has no Landlock, in that process without the
               kernel's restrictions, with a warning (the default of simulated sites)
    off        in NVFLARE's own client job process, as caia did before the sandbox

For each run, `Sandbox` makes a folder of its own (in the system's temporary folder):

    app/       copies of the admitted bundle files the code reads (federated.py, captured/), checked
               against the hashes the guard admitted
    data/      a copy of a released dataset the code asks `ctx.dataset` for, holding exactly the
               approved columns; made when asked for, deleted once the process has read it (its
               next message)
    scratch/   the process's working folder, $HOME and $TMPDIR: the only place it may write

and starts `python -m caia_jupyter.site.confined` there: a fixed command, never one from the bundle,
with a minimal environment and no inherited file but its end of a socket pair and the standard
output and error of the site's job (its log, at the site). (In the simulator,
where speed matters and the sites are the researcher's own machine, the site worker instead forks
that process ahead, `prefork`, from its preloaded state: it then imports nothing.) That process
restricts itself (`confined`) before it reads the bundle, then runs the entry points one step at a
time as this side asks (`runtime.LocalCode`). Everything it sends is untrusted (`wire`). The folder
is removed when the run ends, or by the next run at this machine if its process was killed.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path

from ..contracts.errors import CaiaError, SiteError
from ..contracts.failures import ENTRY_POINTS
from ..contracts.fileset import CAPTURED_DIR, MODULE
from ..contracts.weights import MAX_NUM_SAMPLES
from . import landlock, wire
from . import confined
from .confined import APP, DATA, SCRATCH
from .context import read_released
from .runtime import Failed, RoundResult, _metrics, failing, reserved_metrics

# What the sandboxed process reports it stopped (`confined`): the failure category of each.
STOPPED = {"read": "sandbox_read", "write": "sandbox_write", "network": "sandbox_network",
           "program": "sandbox_program", "signal": "sandbox_signal"}
PREFIX = "caia-sandbox-"  # a run's folder: PREFIX<pid of the process that made it>-<random>
# The failure categories the sandboxed process may report: the code's and caia's runtime in it (not
# what the sandbox stopped, nor anything this side decides)
CODE_CATEGORIES = {"raised", "dataset_not_released", "dataset_unreadable", "schema_changed", "not_a_module",
                   "bad_num_samples", "bad_metrics", "unsupported_state", "contract", "dp_unsupported", "not_private",
                   "site_error"}
GRACE = 5  # seconds a sandboxed process has to end after its run, before it is killed
PASSED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", landlock.ABI_ENV)  # also read by the sandboxed process
log = logging.getLogger("caia.site")
_preforked: list = []  # [(ForkedProcess, Connection)]: the sandboxed process `prefork` made for this process


class SandboxRequired(SiteError):
    """The site's policy requires the sandbox and this machine's kernel cannot give it."""


def placement(policy: str) -> str:
    """Where a site with sandbox `policy` runs approved code on this machine: "landlock" (a process
    of its own, restricted by the kernel), "process" (a process of its own, without the kernel's
    restrictions: policy "preferred" on a kernel without Landlock) or "off" (NVFLARE's job process).

    Raises SandboxRequired (one line) for "required" on a kernel without Landlock."""
    if policy == "off":
        return "off"
    if landlock.abi_version() >= 1:
        return "landlock"
    if policy == "required":
        raise SandboxRequired("its policy requires the sandbox and this machine's kernel has no Linux Landlock; run the "
                              "site on Linux 5.13 or later with Landlock enabled (see `caia site show`), or set its "
                              "sandbox policy to preferred")
    return "process"


class Sandbox:
    """A site's run of the bundle in a sandboxed process, with `runtime.LocalCode`'s steps.

    Every step raises `runtime.Failed`, never anything else, when the run cannot go on: the code
    failed, the sandbox stopped it (category sandbox_*), or its process ended or broke the protocol.
    """

    def __init__(self, app_dir: Path, release):
        self.app_dir, self.release = Path(app_dir), release
        self.root = self.process = self.conn = None
        self.at_round = None
        self.copies = 0
        self.unread = None  # the data copy the process is reading
        self.rows: dict[str, int] = {}  # name -> rows of the last copy made of that released dataset

    def start(self) -> None:
        """Make the run's folder, start the sandboxed process, and let it load the module, build the
        model and load the data."""
        with failing(None, None):
            _sweep()
            self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
            for folder in (APP, DATA, SCRATCH):
                (self.root / folder).mkdir()
            self._copy_app()
            self._spawn()
        release = self.release
        self._call({"op": "start", "root": str(self.root), "env": self._env(), "landlock": release.sandbox == "landlock",
                    "site": release.site, "params": release.params, "rounds": release.rounds, "privacy": release.privacy,
                    "datasets": {name: spec["columns"] for name, spec in release.datasets.items()},
                    "module_sha256": release.files[MODULE], "threads": _torch_threads()}, "ready")

    def round(self, weights: dict, round: int) -> RoundResult:
        """Round `round`: the sandboxed process evaluates `weights`, trains, and answers; its answer is checked
        here (with DP, the accountant history it reports: the site's runtime accounts it, `flare_client.check_private`)."""
        header, arrays = self._call({"op": "round", "round": round}, "result", weights, round)
        private = self.release.privacy is not None
        with failing(None, round):
            num_samples = header.get("num_samples")
            if not _count(num_samples) or num_samples > MAX_NUM_SAMPLES:
                raise CaiaError("the sandboxed process sent a bad num_samples", failure="bad_num_samples", entry="train")
            train, evaluated = _metrics(header.get("train"), "train"), _metrics(header.get("eval"), "evaluate")
            reserved_metrics(evaluated, "evaluate", private)
            reserved_metrics(train, "train", private)
            return RoundResult(num_samples, train, evaluated, arrays, header.get("dp_history") if private else None)

    @property
    def released_rows(self) -> int:
        """Rows of the released datasets copied for the process (each counted once), as this side made them."""
        return sum(self.rows.values())

    def evaluate(self, weights: dict, round: int) -> dict[str, float]:
        """The final evaluation of `weights` in the sandboxed process."""
        header, _ = self._call({"op": "evaluate", "round": round}, "metrics", weights, round)
        with failing(None, round):
            metrics = _metrics(header.get("metrics"), "evaluate")
            reserved_metrics(metrics, "evaluate", self.release.privacy is not None)
            return metrics

    def close(self) -> None:
        """End the sandboxed process (killed after GRACE seconds) and remove the run's folder."""
        if self.conn is not None:
            try:
                wire.send(self.conn, {"op": "close"})
            except OSError:
                pass
            self.conn.close()
        if self.process is not None:
            try:
                self.process.wait(GRACE)
            except subprocess.TimeoutExpired:
                self._kill()
                self.process.wait()
            self._kill()  # what it forked: its process group, which it cannot leave
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def _copy_app(self) -> None:
        """Copy the bundle files the code reads, each checked against the hash the guard admitted."""
        for name, sha256 in self.release.files.items():
            if name != MODULE and not name.startswith(f"{CAPTURED_DIR}/"):
                continue
            data = (self.app_dir / "custom" / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SiteError(f"{name} is not the file the site admitted; the run stops here")
            target = self.root / APP / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)

    def _spawn(self) -> None:
        if _preforked:
            self.process, self.conn = _preforked.pop()
            return
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-s", "-P", "-m", "caia_jupyter.site.confined", str(theirs.fileno())],
                cwd=self.root / SCRATCH, env=self._env(), stdin=subprocess.DEVNULL, close_fds=True, pass_fds=[theirs.fileno()],
                start_new_session=True)
        self.conn = Connection(ours.detach())

    def _env(self) -> dict[str, str]:
        """The sandboxed process's whole environment."""
        scratch = str(self.root / SCRATCH)
        return {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # the folder caia_jupyter is in
                **{name: os.environ[name] for name in PASSED_ENV if name in os.environ}}

    def _call(self, request: dict, answer: str, weights: dict | None = None, round: int | None = None):
        """Send `request`, serve what the process asks meanwhile, and return its `answer` (header, arrays)."""
        self.at_round = round
        # The answer holds at most the model this side sent (the same entries, dtypes and shapes) and a header
        limit = wire.MAX_HEADER + 16 + sum(array.nbytes for array in (weights or {}).values())
        try:
            wire.send(self.conn, request, weights)
            while True:
                header, arrays = wire.receive(self.conn, limit)
                if self.unread:  # any message after it says the process has read it
                    self.unread = self.unread.unlink()
                kind = header.get("kind")
                if kind == answer:
                    return header, arrays
                if kind == "dataset":
                    self._release_copy(header.get("name"))
                elif kind == "stopped":
                    self._stopped(header)
                elif kind == "failed":
                    self._failed(header)
                else:
                    raise wire.WireError(f"unexpected message {str(kind)[:40]!r}")
        except Failed:
            raise
        except EOFError:
            self._end({"entry": "runtime", "round": round, "category": "exited"},
                      {"message": "the sandboxed process ended without answering", "exit_code": self._exit_code()})
        except Exception as e:  # anything else it sent or did (WireError, a message beyond the limit...)
            self._end({"entry": "runtime", "round": round, "category": "site_error"},
                      {"message": f"the sandboxed process broke the protocol: {type(e).__name__}: {e}"})

    def _release_copy(self, name) -> None:
        """Copy released dataset `name` (the approved columns, read as the guard read them) into data/
        and tell the process its file; or tell it the failure category (the site's log has the story)."""
        spec = self.release.datasets.get(name) if isinstance(name, str) else None
        if spec is None:
            wire.send(self.conn, {"kind": "dataset", "failure": "dataset_not_released"})
            return
        try:
            frame = read_released(self.release.site, name, spec)
        except SiteError as e:
            log.error("dataset %s could not be released to the sandboxed process: %s", name, e)
            wire.send(self.conn, {"kind": "dataset", "failure": e.failure})
            return
        self.rows[name] = len(frame)
        self.copies += 1
        file = f"{self.copies}.pkl"
        self.unread = self.root / DATA / file
        frame.to_pickle(self.unread)  # pickle keeps every dtype exactly; only this side writes it
        wire.send(self.conn, {"kind": "dataset", "file": file})

    def _stopped(self, header: dict) -> None:
        what, entry = header.get("what"), header.get("entry")
        self._end({"entry": entry if isinstance(entry, str) and entry in ENTRY_POINTS else "runtime", "round": self.at_round,
                   "category": STOPPED.get(what, "unknown") if isinstance(what, str) else "unknown"},
                  {"sandbox": str(what)[:40], "attempt": str(header.get("target"))[:confined.MAX_TEXT]})

    def _failed(self, header: dict) -> None:
        """The code's failure, as the process tells it: this side keeps the round and takes only an
        entry point and a category the code's side can report (the process runs the code: what it
        says is the code's word: the record holds it, the site's report comes first)."""
        from ..contracts import failures

        told, record = failures.parse(header.get("report")), header.get("record")
        category = told.category if told.category in CODE_CATEGORIES else "unknown"
        self._end({"entry": told.entry, "round": self.at_round, "category": category},
                  {str(k): str(v)[:confined.MAX_TEXT] for k, v in record.items()} if isinstance(record, dict) else {})

    def _exit_code(self) -> int | None:
        """The process's exit code (negative: the signal that ended it), once it is reaped; None if it runs on."""
        try:
            return self.process.wait(1)
        except subprocess.TimeoutExpired:
            return None

    def _end(self, report: dict, record: dict):
        """Kill the process at once (it may still be running the code), and fail the run here."""
        if self.process is not None:
            self._kill()
        raise Failed(report, record)

    def _kill(self) -> None:
        """Kill the sandboxed process's group: the process (a session of its own) and what it forked."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nothing of it is left
            pass


def _count(value) -> bool:
    """Whether `value` (received) is a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sweep() -> None:
    """Remove the run folders (data copies, scratch) that processes which no longer run left behind."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = folder.name.removeprefix(PREFIX).split("-")[0]
        try:
            stale = pid.isdigit() and not Path(f"/proc/{pid}").exists() and folder.stat().st_uid == os.getuid()
        except OSError:  # gone meanwhile: another site's sweep (sites of a simulator start together)
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)


def prefork() -> None:
    """Fork now the process this process's next `Sandbox` will run its code in; it waits, holding
    nothing but its end of a socket pair, until then (or ends when this process does).

    Call it while this process has one thread (Landlock restricts only the thread that asks, and a
    fork keeps only the calling thread), and before it holds anything of a site: the simulator's
    site worker calls it first thing, having imported torch and pandas from its fork server."""
    ours, theirs = socket.socketpair()
    process = multiprocessing.get_context("fork").Process(target=confined.preforked, args=(theirs, ours), daemon=True,
                                                          name="caia-sandbox")
    process.start()
    theirs.close()
    _preforked.append((ForkedProcess(process), Connection(ours.detach())))


class ForkedProcess:
    """The part of `subprocess.Popen` caia uses, for a `multiprocessing.Process` forked by this one."""

    def __init__(self, process: multiprocessing.Process):
        self._process, self.pid = process, process.pid

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self._process.exitcode

    def terminate(self):
        self._process.terminate()

    def kill(self):
        self._process.kill()


def _torch_threads() -> int | None:
    """This process's torch thread count, for the sandboxed process to use the same (None: torch not loaded)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch else None
