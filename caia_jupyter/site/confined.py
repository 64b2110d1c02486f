"""The sandboxed process a site runs approved code in: `python -m caia_jupyter.site.confined FD`.

Started by `sandbox.Sandbox` in the run's scratch folder, with FD its end of a socket pair. First,
while it is still one thread (Landlock restricts the calling thread and the threads it starts
later; numpy's BLAS starts threads at import), it restricts itself for good (`landlock.restrict`):
it may read the Python installation, the system's shared libraries, the CPU description torch
reads, the run's app/ and data/ folders, and write only scratch/; it can start no program, open
no socket, and (as the kernel allows) signal no process outside itself. Then it imports what the
code needs (torch, pandas, numpy) and installs an audit hook (PEP 578) that reports, with its
target, every attempt Python makes beyond those bounds and refuses it: the site records it and
stops the run. The hook records; the kernel enforces (what bypasses Python's audit events, such
as native code, is refused by the kernel all the same).

Then it serves the site's runtime one step at a time (`runtime.LocalCode`), sending back results,
its failure (report and whole story), or a request for a released dataset (`ctx.dataset`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import sys
import sysconfig
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from . import landlock, wire

APP, DATA, SCRATCH = "app", "data", "scratch"  # the run's folders (`sandbox`)
MAX_TEXT = 100_000  # characters of a failure's text or an attempt's target sent: within wire.MAX_HEADER
# Read-only besides the Python installation and its interpreter (platform reads its libc version):
# shared libraries the imports load, the randomness and CPU description torch reads when it loads,
# the CPU quota pandas sizes its CSV reader's threads by, time zones, and the process's own /proc
# entry (its memory use, as psutil reads it; /proc/self is this process's own once restricted).
SYSTEM = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache", "/dev/urandom", "/proc/cpuinfo",
          "/sys/devices/system/cpu", "/sys/fs/cgroup", "/usr/share/zoneinfo", "/proc/self"]

_PR_SET_PDEATHSIG = 1  # prctl.h
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_WRITE_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.symlink", "os.link", "os.truncate",
                 "os.chmod", "os.chown", "os.utime", "os.chflags", "os.lchflags"}
_PROGRAM_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile", "pty.spawn"}
_NETWORK_EVENTS = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                   "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}


def python_roots() -> list[str]:
    """The folders of this Python installation (standard library and site-packages, of the
    environment and of the Python it is made from, and the folders their .pth files add inside
    those prefixes) and of caia_jupyter itself: what the code may read besides its run's folders and
    SYSTEM. Not sys.path as such, which may hold the folder a process was started in; nor a .pth
    folder elsewhere (an editable install's whole source tree, where a demo may keep its sites)."""
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    roots = {sysconfig.get_paths()[n] for n in names}
    roots |= {sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})[n] for n in names}
    prefixes = [os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]
    for packages in [sysconfig.get_paths()[n] for n in ("purelib", "platlib")]:
        for pth in Path(packages).glob("*.pth"):
            lines = pth.read_text(errors="replace").splitlines()
            added = [os.path.join(packages, line.strip()) for line in lines if line.strip() and not line.startswith(("#", "import"))]
            roots |= {folder for folder in added if Watch.within(folder, prefixes)}
    roots.add(str(Path(__file__).resolve().parents[1]))  # caia_jupyter
    return sorted({os.path.realpath(r) for r in roots if os.path.isdir(r)})


class Watch:
    """The audit hook: report what the code attempts beyond the sandbox's bounds, and refuse it.

    `read` and `write` are the folders (and files) it may read, and read and write: resolved paths."""

    def __init__(self, send, read: list[str], write: list[str], where):
        self.send, self.where = send, where
        self.write, self.read = write, write + read
        self.busy = threading.local()

    def __call__(self, event: str, args: tuple) -> None:
        if getattr(self.busy, "on", False):
            return
        what = target = None
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            flags, mode = args[2], args[1]
            writes = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (isinstance(mode, str) and set(mode) & set("wax+"))
            what = "write" if writes and not self.within(args[0], self.write) else (
                "read" if not self.within(args[0], self.read) else None)
            target = args[0]
        elif event in ("os.listdir", "os.scandir", "glob.glob") and isinstance(args[0], (str, bytes, os.PathLike)):
            what, target = ("read" if not self.within(args[0], self.read) else None), args[0]
        elif event in _WRITE_EVENTS and isinstance(args[0], (str, bytes, os.PathLike)):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))] if event in ("os.rename", "os.link", "os.symlink") else [args[0]]
            outside = [p for p in paths if not self.within(p, self.write)]
            what, target = ("write", outside[0]) if outside else (None, None)
        elif event in _PROGRAM_EVENTS:
            what, target = "program", args[:2]
        elif event in _NETWORK_EVENTS:
            what, target = "network", args[1:]
        elif event in ("os.kill", "os.killpg") and not _own(args[0], event):
            what, target = "signal", args[0]
        if what:
            self.report(what, target)
            raise PermissionError(errno.EACCES, f"the site's sandbox does not allow this ({what})")

    def report(self, what: str, target) -> None:
        self.busy.on = True
        try:
            self.send({"kind": "stopped", "what": what, "entry": self.where(), "target": (os.fsdecode(target)
                       if isinstance(target, (str, bytes, os.PathLike)) else repr(target))[:MAX_TEXT]})
        finally:
            self.busy.on = False

    @staticmethod
    def within(path, roots: list[str]) -> bool:
        """Whether `path` (resolved: links followed, relative to the working folder) lies in one of `roots`."""
        path = os.path.realpath(os.fsdecode(path))
        return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _own(pid, event: str) -> bool:
    """Whether signalling `pid` stays inside the sandbox: this process, or a child it started."""
    if not isinstance(pid, int) or pid <= 0 or event == "os.killpg":
        return False
    if pid == os.getpid():
        return True
    try:  # raises ChildProcessError unless pid is a child of this process; changes nothing
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


def preforked(theirs, ours) -> None:
    """A process `sandbox.prefork` forked ahead: keep only its socket, wait for its run, serve it."""
    ours.close()
    os.setsid()  # a process group of its own, which the site kills with the run (as Popen's start_new_session)
    fd = theirs.detach()
    os.closerange(3, fd)  # nothing its parent held stays open here
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    os.environ.clear()
    try:
        serve(Connection(fd))
    except EOFError:  # its parent ended without a run for it
        pass


def serve(conn: Connection) -> None:
    """Restrict this process, then run the steps the site's runtime asks for until it closes."""
    start, _ = wire.receive(conn)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # its site's process gone, it goes
    root = Path(start["root"])  # the run's folder (`sandbox`)
    os.chdir(root / SCRATCH)
    os.environ.clear()
    os.environ.update(start["env"])
    tempfile.tempdir = None  # chosen again from $TMPDIR (scratch): a forked process may have chosen /tmp already
    platform.uname().processor  # noqa: B018  asked of `uname -p` now, while a program may run; cached after
    lock = threading.Lock()  # the code may start threads, and the audit hook sends from any of them

    def send(header: dict, arrays: dict | None = None) -> None:
        with lock:
            wire.send(conn, header, arrays)

    read = [os.path.realpath(p) for p in [*python_roots(), sys.executable, *SYSTEM, root / APP, root / DATA]]
    write = [os.path.realpath(p) for p in [root / SCRATCH, os.devnull]]
    # Imports look only where the process may read (a started-in folder on sys.path would be a read outside)
    sys.path[:] = [p for p in sys.path if p and Watch.within(p, read)]
    sys.path_importer_cache.clear()
    try:
        enforced = landlock.restrict(read=read, write=write)
        if start.get("landlock") and not enforced["filesystem"]:  # the guard admitted the bundle to a sandbox
            raise landlock.SandboxUnavailable("the kernel's Landlock restrictions were not applied")
    except Exception as e:  # caia's own failure: the site's log keeps it
        send({"kind": "failed", "report": {"entry": "runtime", "round": None, "category": "site_error"},
                         "record": {"exception": type(e).__name__, "message": f"the sandbox could not be set up: {e}"}})
        return
    import pandas as pd
    import torch
    import torch._dynamo  # noqa: F401  (the compiler stack torch's optimizers load on first use)
    import torch.optim  # noqa: F401

    from ..contracts.errors import SiteError
    from ..contracts.failures import CATEGORIES
    from .context import Context
    from .runtime import Failed, LocalCode, outermost_entry

    if start.get("threads"):
        torch.set_num_threads(start["threads"])
    code = None

    def where() -> str:
        """The entry point running now (the outermost on this stack), or "runtime"."""
        if code is None or code.entry is None:
            return "runtime"
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            frames.append(frame.f_code)
            frame = frame.f_back
        return outermost_entry(reversed(frames), code.entry)

    sys.addaudithook(Watch(send, read, write, where))

    def read_copy(name: str, spec: dict) -> pd.DataFrame:
        send({"kind": "dataset", "name": name})
        answer, _ = wire.receive(conn)
        if "file" not in answer:
            failure = answer.get("failure")
            raise SiteError(f"site {start['site']} could not release dataset {name!r} ({failure})",
                            failure=failure if failure in CATEGORIES else "site_error")
        return pd.read_pickle(root / DATA / answer["file"])

    ctx = Context(start["site"], start["params"], {name: {"columns": columns} for name, columns in start["datasets"].items()},
                  rounds=start["rounds"], reader=read_copy, privacy=start.get("privacy"))
    code = LocalCode(root / APP, start["module_sha256"], ctx)
    try:
        code.start()
        send({"kind": "ready"})
        while True:
            request, weights = wire.receive(conn)
            if request.get("op") == "round":
                result = code.round(weights, request["round"])
                send({"kind": "result", "num_samples": result.num_samples, "train": result.train_metrics,
                      "eval": result.eval_metrics, "dp_history": result.dp_history}, result.weights)
            elif request.get("op") == "evaluate":
                send({"kind": "metrics", "metrics": code.evaluate(weights, request["round"])})
            else:
                return
    except Failed as failed:
        send({"kind": "failed", "report": failed.report, "record": {k: str(v)[:MAX_TEXT] for k, v in failed.record.items()}})
    except EOFError:
        return


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
