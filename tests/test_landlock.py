"""The Landlock + seccomp sandbox of caia_jupyter.site.landlock, enforced by this machine's kernel.

Restriction is for good, so each case runs in a fresh Python child: the child imports what it needs,
calls `restrict(READ, WRITE)`, tries things and prints, as JSON, what each attempt gave ("ok" or the
OSError it raised). The parent (this test process) holds the listeners and the signal handler that
would see anything get through.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from caia_jupyter.site import landlock

REPO = Path(__file__).resolve().parents[1]
KERNEL = landlock.support()
PYTHON = sorted({sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")})

CHILD = '''
import json, os, signal, socket, subprocess, sys
from caia_jupyter.site import landlock

def attempt(action):
    """"ok", or the name of the OSError the action raised."""
    try:
        action()
        return "ok"
    except OSError as error:
        return type(error).__name__

def read(path):
    with open(path) as f:
        return f.read()

def write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)

'''


def run_child(body: str, read=(), write=(), setup: str = "", env: dict | None = None) -> dict:
    """Run `setup`, then `enforced = restrict(read, write)`, then `body` (which fills the dict `out`)
    in a fresh Python child; returns `out` with `enforced` added."""
    script = (CHILD + textwrap.dedent(setup) + f"\nenforced = landlock.restrict({[str(p) for p in read]!r}, "
              f"{[str(p) for p in write]!r})\nout = {{}}\n" + textwrap.dedent(body)
              + "\nprint(json.dumps({**out, 'enforced': enforced}))\n")
    child_env = {k: v for k, v in os.environ.items() if k != landlock.ABI_ENV}
    # OpenBLAS starts a thread pool when numpy is imported; restrict needs a single-threaded process
    child_env.update(PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", **(env or {}))
    result = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout, "the child printed nothing: did it run another program in its place?"
    return json.loads(result.stdout.splitlines()[-1])


def needs(abi: int = 1, sockets: bool = True):
    """Skip unless this kernel offers Landlock ABI `abi` (and the seccomp filter, when `sockets`)."""
    if KERNEL["landlock_abi"] < abi:
        pytest.skip(f"this kernel offers Landlock ABI {KERNEL['landlock_abi']}, the case needs {abi}")
    if sockets and not KERNEL["sockets"]:
        pytest.skip("this kernel or architecture takes no seccomp filter")


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """(a released folder holding data.csv, an empty scratch folder)."""
    released, scratch = tmp_path / "released", tmp_path / "scratch"
    released.mkdir()
    scratch.mkdir()
    (released / "data.csv").write_text("a,b\n1,2\n")
    return released, scratch


def test_the_release_can_be_read_and_nothing_else(dirs):
    needs(abi=1, sockets=False)
    released, scratch = dirs
    single, log = released.parent / "single.txt", released.parent / "log.txt"
    single.write_text("one file")
    log.write_text("")
    out = run_child(f"""
        out["release"] = read({str(released / "data.csv")!r})
        out["single"] = read({str(single)!r})
        write({str(log)!r}, "written")
        out["list release"] = attempt(lambda: os.listdir({str(released)!r}))
        out["passwd"] = attempt(lambda: read("/etc/passwd"))
        out["list root"] = attempt(lambda: os.listdir("/"))
        out["new file in release"] = attempt(lambda: write({str(released / "new")!r}))
        out["append to release"] = attempt(lambda: open({str(released / "data.csv")!r}, "a"))
        out["delete in release"] = attempt(lambda: os.unlink({str(released / "data.csv")!r}))
        out["file beside"] = attempt(lambda: write({str(released.parent / "beside")!r}))
        """, read=[released, single, "/no/such/path"], write=[scratch, log])
    assert out.pop("release") == "a,b\n1,2\n" and out.pop("list release") == "ok" and out.pop("single") == "one file"
    assert log.read_text() == "written"  # a file given to `write` gets the file rights
    assert out.pop("enforced") == KERNEL
    assert set(out.values()) == {"PermissionError"}, out
    assert sorted(p.name for p in released.parent.iterdir()) == ["log.txt", "released", "scratch", "single.txt"]
    assert [p.name for p in released.iterdir()] == ["data.csv"]


def test_scratch_can_be_written_but_a_link_out_of_it_cannot_be_read(dirs):
    needs(abi=1, sockets=False)
    released, scratch = dirs
    out = run_child(f"""
        os.chdir({str(scratch)!r})
        write("a.txt", "hello"); os.rename("a.txt", "b.txt"); os.mkdir("d"); write("d/c.txt")
        os.truncate("d/c.txt", 0); os.unlink("d/c.txt"); os.rmdir("d"); write("gone"); os.unlink("gone")
        out["b"] = read("b.txt")
        os.symlink("/etc/passwd", "link")
        out["through link"] = attempt(lambda: read("link"))
        """, read=[released], write=[scratch])
    assert out["b"] == "hello" and out["through link"] == "PermissionError"
    assert sorted(p.name for p in scratch.iterdir()) == ["b.txt", "link"]


def test_no_program_can_be_started(dirs):
    needs(abi=1, sockets=False)
    released, scratch = dirs
    # a program in the writable folder; ldconfig is statically linked, so it needs no loader to run
    shutil.copy("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else "/bin/true", scratch / "copied")
    out = run_child(f"""
        out["copied"] = attempt(lambda: subprocess.run([{str(scratch / "copied")!r}, "--version"]))
        out["sh"] = attempt(lambda: subprocess.run(["sh", "-c", "touch {scratch}/ran"]))
        out["python"] = attempt(lambda: subprocess.run([sys.executable, "-c", "pass"]))
        out["execv"] = attempt(lambda: os.execv("/bin/true", ["true"]))
        """, read=[released, *PYTHON, "/bin", "/usr/bin"], write=[scratch])
    assert [out["copied"], out["sh"], out["python"], out["execv"]] == ["PermissionError"] * 4
    assert not (scratch / "ran").exists()


@pytest.fixture
def tcp_listener():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener


def test_no_tcp_connection_or_listener(dirs, tcp_listener):
    needs(abi=4)
    port = tcp_listener.getsockname()[1]
    out = run_child(f"""
        out["new socket"] = attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
        out["connect"] = attempt(lambda: made_before.connect(("127.0.0.1", {port})))
        out["bind"] = attempt(lambda: bound_before.bind(("127.0.0.1", 0)))
        """, setup="made_before, bound_before = socket.socket(), socket.socket()", write=[dirs[1]])
    # a new socket is refused by seccomp; sockets made before restrict, by Landlock
    assert {k: out[k] for k in ("new socket", "connect", "bind")} == dict.fromkeys(
        ("new socket", "connect", "bind"), "PermissionError")
    with pytest.raises(BlockingIOError):
        tcp_listener.accept()


def test_a_connection_made_before_restrict_still_carries_data(dirs, tcp_listener):
    """What the process connects to first (its parent) stays reachable; nothing new can be opened."""
    needs(abi=4)
    tcp_listener.setblocking(True)
    out = run_child("""
        early.sendall(b"after restrict")
        """, setup=f"early = socket.create_connection(('127.0.0.1', {tcp_listener.getsockname()[1]}))",
        write=[dirs[1]])
    connection, _ = tcp_listener.accept()
    with connection:
        assert connection.recv(100) == b"after restrict"
    assert out["enforced"]["tcp"] is True


def test_no_udp_unix_or_x32_sockets(dirs):
    needs(abi=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        out = run_child(f"""
            import ctypes
            def udp():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"leak", ("127.0.0.1", {port}))
            out["udp"] = attempt(udp)
            out["unix"] = attempt(lambda: socket.socket(socket.AF_UNIX))
            out["socketpair"] = attempt(socket.socketpair)
            out["netlink"] = attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
            libc = ctypes.CDLL(None, use_errno=True)
            # getpid (39) through the x32 syscall ABI: refused on x86_64
            out["x32"] = (libc.syscall(0x40000000 | 39), ctypes.get_errno())
            """, write=[dirs[1]])
        with pytest.raises(BlockingIOError):
            receiver.recv(100)
    assert [out["udp"], out["unix"], out["socketpair"], out["netlink"]] == ["PermissionError"] * 4
    if os.uname().machine == "x86_64":
        assert out["x32"] == [-1, 13]


def test_io_uring_memfd_programs_leaving_the_group_and_kernel_facilities_are_refused(dirs):
    """What Landlock ABI 7 does not cover: io_uring (which opens sockets and files without those
    calls), running a memfd with execveat, setsid, BPF, perf events, ptrace; and no capability is
    left, even to a root site."""
    needs(abi=1)
    released, scratch = dirs
    numbers = {name: landlock.DENIED[name][0 if os.uname().machine == "x86_64" else 1]
               for name in ("io_uring_setup", "execveat", "bpf", "perf_event_open", "ptrace", "unshare")}
    out = run_child(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def call(name, *args):
            result = libc.syscall({numbers!r}[name], *args)
            return [result, ctypes.get_errno() if result < 0 else 0]
        params = ctypes.create_string_buffer(120)
        out["io_uring_setup"] = call("io_uring_setup", 8, params)
        out["execveat"] = call("execveat", memfd, b"", None, None, 0x1000)  # AT_EMPTY_PATH: the memfd itself
        out["bpf"] = call("bpf", 0, None, 0)
        out["perf_event_open"] = call("perf_event_open", None, 0, -1, -1, 0)
        out["ptrace"] = call("ptrace", 16, os.getppid(), None, None)  # PTRACE_ATTACH
        out["unshare"] = call("unshare", 0x10000000)  # CLONE_NEWUSER
        out["setsid"] = attempt(os.setsid)
        out["setuid"] = attempt(lambda: os.setuid(65534)) if os.getuid() == 0 else "PermissionError"
        """, setup="""
        memfd = os.memfd_create("program")
        os.write(memfd, open("/bin/true", "rb").read())
        """, write=[scratch])
    assert {name: out[name] for name in numbers} == {name: [-1, 13] for name in numbers}
    assert out["setsid"] == "PermissionError" and out["setuid"] == "PermissionError"


def test_the_parent_cannot_be_signalled(dirs):
    needs(abi=6, sockets=False)
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        out = run_child("""
            out["probe parent"] = attempt(lambda: os.kill(os.getppid(), 0))
            out["signal parent"] = attempt(lambda: os.kill(os.getppid(), signal.SIGUSR1))
            out["probe self"] = attempt(lambda: os.kill(os.getpid(), 0))
            """, write=[dirs[1]])
        assert received == []
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler does record a signal that gets through
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert [out["probe parent"], out["signal parent"], out["probe self"]] == ["PermissionError"] * 2 + ["ok"]


def test_an_abstract_unix_socket_of_the_parent_is_out_of_reach(dirs):
    needs(abi=6)
    address = f"\0caia-landlock-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        listener.listen()
        listener.setblocking(False)
        out = run_child(f"""
            out["made before"] = attempt(lambda: made_before.connect({address!r}))
            out["new socket"] = attempt(lambda: socket.socket(socket.AF_UNIX).connect({address!r}))
            """, setup="made_before = socket.socket(socket.AF_UNIX)", write=[dirs[1]])
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert [out["made before"], out["new socket"]] == ["PermissionError"] * 2


def test_python_still_imports_from_its_installation_and_numpy_still_computes(dirs):
    needs(abi=1, sockets=False)
    out = run_child("""
        assert "decimal" not in sys.modules
        import decimal
        out["decimal"] = str(decimal.Decimal("1.10") + 2)
        out["numpy"] = float(np.linalg.inv(np.array([[2.0, 0.0], [0.0, 4.0]])).sum())
        """, setup="import numpy as np", read=PYTHON, write=[dirs[1]])
    assert out["decimal"] == "3.10" and out["numpy"] == 0.75
    assert out["enforced"]["filesystem"] is True


def test_the_abi_seam_only_lowers_what_the_kernel_offers(monkeypatch):
    real = landlock.abi_version()
    monkeypatch.setenv(landlock.ABI_ENV, "0")
    assert landlock.abi_version() == 0
    assert {k: v for k, v in landlock.support().items() if k != "sockets"} == {
        "landlock_abi": 0, "filesystem": False, "tcp": False, "scoping": False}
    monkeypatch.setenv(landlock.ABI_ENV, "99")
    assert landlock.abi_version() == real
    monkeypatch.setenv(landlock.ABI_ENV, "three")
    with pytest.raises(landlock.SandboxUnavailable, match=landlock.ABI_ENV):
        landlock.abi_version()


def test_without_landlock_restrict_still_sets_no_new_privs_and_closes_sockets(dirs):
    needs(abi=0)
    out = run_child("""
        out["passwd"] = attempt(lambda: read("/etc/passwd"))
        out["socket"] = attempt(socket.socket)
        out["status"] = [line for line in read("/proc/self/status").splitlines() if line.startswith(("NoNewPrivs", "Seccomp:"))]
        """, write=[dirs[1]], env={landlock.ABI_ENV: "0"})
    assert out["enforced"] == {"landlock_abi": 0, "filesystem": False, "tcp": False, "scoping": False, "sockets": True}
    assert out["passwd"] == "ok" and out["socket"] == "PermissionError"
    assert out["status"] == ["NoNewPrivs:\t1", "Seccomp:\t2"]


def test_restrict_refuses_a_process_with_a_second_thread(dirs):
    out = run_child("", setup="""
        import threading
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            landlock.restrict([], [])
        except landlock.SandboxUnavailable as error:
            print(json.dumps({"error": str(error), "passwd": attempt(lambda: read("/etc/passwd"))}))
        sys.exit(0)
        """)
    assert "2 threads" in out["error"] and "\n" not in out["error"]
    assert out["passwd"] == "ok"  # nothing was applied


@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6])
def test_an_older_abi_gets_the_ruleset_it_knows(dirs, abi):
    """The seam lowers the ABI, so this kernel takes each older ruleset layout (8, 16 or 24 bytes)."""
    needs(abi=abi)
    released, scratch = dirs
    out = run_child(f"""
        out["release"] = attempt(lambda: read({str(released / "data.csv")!r}))
        out["passwd"] = attempt(lambda: read("/etc/passwd"))
        write({str(scratch / "x")!r})
        """, read=[released], write=[scratch], env={landlock.ABI_ENV: str(abi)})
    assert out["enforced"] == {"landlock_abi": abi, "filesystem": True, "tcp": abi >= 4, "scoping": abi >= 6,
                               "sockets": True}
    assert [out["release"], out["passwd"]] == ["ok", "PermissionError"] and (scratch / "x").exists()
