"""The sandbox's own logic: the wire format, the audit hook `Watch`, and `Sandbox`'s failure paths.

Everything the sandboxed process sends is untrusted: these tests forge what a hostile process could
send (with a fake child that speaks the protocol wrongly) and check the site only ever raises
`runtime.Failed` with a closed-vocabulary category, and always removes the run's folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import numpy as np
import pytest

from caia_jupyter.site import confined, sandbox, wire
from caia_jupyter.site.release import Release
from caia_jupyter.site.runtime import Failed

REPO = Path(__file__).resolve().parents[1]
MINIMAL_ENV = {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH"}  # what `Sandbox` sets itself


# --- wire ------------------------------------------------------------------------------------------

@pytest.fixture
def pipe():
    ours, theirs = Pipe()
    yield ours, theirs
    ours.close()
    theirs.close()


def frame(header, body: bytes = b"") -> bytes:
    """A raw message: the 4-byte header length, the header (a JSON-able value, or bytes as they are), the body."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(head).to_bytes(4, "big") + head + body


NUMERIC = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
           np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def test_header_round_trips_with_nan_and_infinities(pipe):
    ours, theirs = pipe
    header = {"kind": "result", "train": {"loss": math.nan, "up": math.inf, "down": -math.inf}, "n": 3, "s": "ü"}
    wire.send(ours, header)
    got, arrays = wire.receive(theirs)
    assert arrays == {}
    assert math.isnan(got["train"]["loss"]) and got["train"]["up"] == math.inf and got["train"]["down"] == -math.inf
    assert {k: got[k] for k in ("kind", "n", "s")} == {"kind": "result", "n": 3, "s": "ü"}


def test_arrays_of_every_numeric_dtype_round_trip_in_order(pipe):
    ours, theirs = pipe
    rng = np.random.default_rng(0)
    arrays = {}
    for i, dtype in enumerate(NUMERIC):
        arrays[f"z{i}"] = (rng.integers(0, 2, size=(3, 4)) if dtype is np.bool_ else rng.integers(0, 100, size=(3, 4))).astype(dtype)
    arrays["scalar"] = np.array(7.5, dtype=np.float64)  # 0-d
    arrays["empty"] = np.zeros((0, 5), dtype=np.int32)
    arrays["strided"] = np.arange(24, dtype=np.float32).reshape(4, 6)[::2, ::3]  # not contiguous
    arrays["transposed"] = np.arange(6, dtype=np.int64).reshape(2, 3).T
    arrays["big_endian"] = np.arange(3, dtype=">f8")
    assert not arrays["strided"].flags.c_contiguous
    wire.send(ours, {"kind": "result"}, arrays)
    header, got = wire.receive(theirs)
    assert header == {"kind": "result"}  # the array list is the wire's own, not the header's
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
        assert not got[name].flags.writeable  # a view of the received bytes


def test_float_values_keep_every_bit(pipe):
    ours, theirs = pipe
    values = np.array([math.nan, -0.0, math.inf, 5e-324, np.finfo(np.float64).max], dtype=np.float64)
    halves = np.array([math.nan, -0.0, -math.inf, 6e-8, 65504], dtype=np.float16)
    wire.send(ours, {}, {"v": values, "h": halves})
    _, got = wire.receive(theirs)
    assert got["v"].tobytes() == values.tobytes()
    assert got["h"].tobytes() == halves.tobytes()


MALFORMED = {
    "empty": b"",
    "shorter than the length prefix": b"\x00\x00\x01",
    "header length beyond the frame": (100).to_bytes(4, "big") + b'{"a": 1}',
    "header length beyond the limit": (wire.MAX_HEADER + 1).to_bytes(4, "big") + b"{}" + b" " * (wire.MAX_HEADER),
    "header not JSON": frame(b"{not json"),
    "header not UTF-8": frame(b'{"a": "\xff"}'),
    "header a list": frame([1, 2]),
    "header a string": frame("kind"),
    "header null": frame(None),
    "header nested too deeply": frame(b"[" * 100_000 + b"]" * 100_000),
    "arrays a dict": frame({"arrays": {"w": ["<f8", [1]]}}, b"\x00" * 8),
    "arrays a string": frame({"arrays": "w"}),
    "arrays NaN": frame(b'{"arrays": NaN}'),
    "entry not a triple": frame({"arrays": [["w", "<f8"]]}, b"\x00" * 8),
    "entry a string": frame({"arrays": ["abc"]}),
    "entry name not a string": frame({"arrays": [[1, "<f8", [1]]]}, b"\x00" * 8),
    "object dtype": frame({"arrays": [["w", "|O", [1]]]}, b"\x00" * 8),
    "void dtype": frame({"arrays": [["w", "|V8", [1]]]}, b"\x00" * 8),
    "structured dtype": frame({"arrays": [["w", [["a", "<f8"]], [1]]]}, b"\x00" * 8),
    "subarray dtype": frame({"arrays": [["w", "(2,)<f8", [1]]]}, b"\x00" * 16),
    "string dtype": frame({"arrays": [["w", "<U1", [1]]]}, b"\x00" * 4),
    "datetime dtype": frame({"arrays": [["w", "<M8[s]", [1]]]}, b"\x00" * 8),
    "complex dtype": frame({"arrays": [["w", "<c16", [1]]]}, b"\x00" * 16),
    "unknown dtype": frame({"arrays": [["w", "float128x", [1]]]}, b"\x00" * 8),
    "negative shape": frame({"arrays": [["w", "<f8", [-1]]]}, b"\x00" * 8),
    "bool shape": frame({"arrays": [["w", "<f8", [True]]]}, b"\x00" * 8),
    "float shape": frame({"arrays": [["w", "<f8", [1.0]]]}, b"\x00" * 8),
    "shape not a list": frame({"arrays": [["w", "<f8", 1]]}, b"\x00" * 8),
    "repeated name": frame({"arrays": [["w", "<f8", [1]], ["w", "<f8", [1]]]}, b"\x00" * 16),
    "arrays longer than the frame": frame({"arrays": [["w", "<f8", [2]]]}, b"\x00" * 15),
    "huge shape": frame({"arrays": [["w", "<f8", [2**62, 2**62]]]}, b"\x00" * 8),
    "trailing bytes": frame({"arrays": [["w", "<f8", [1]]]}, b"\x00" * 9),
    "trailing bytes, no arrays": frame({"kind": "ready"}, b"\x00"),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_raise_wire_error(pipe, data):
    ours, theirs = pipe
    sender = threading.Thread(target=ours.send_bytes, args=(data,))  # a large frame fills the pipe's buffer
    sender.start()
    with pytest.raises(wire.WireError):
        wire.receive(theirs)
    sender.join()


# An empty array's shape is not bounded by the frame's length: numpy refuses these with ValueError.
UNBOUNDED_EMPTY = {
    "zero-sized, a dimension beyond a C integer": frame({"arrays": [["w", "<f8", [0, 10**30]]]}),
    "zero-sized, more dimensions than numpy has": frame({"arrays": [["w", "<f8", [0] * 70]]}),
    "zero-sized, dimensions whose product overflows": frame({"arrays": [["w", "<f8", [2**62, 2**62, 0]]]}),
}


@pytest.mark.parametrize("data", UNBOUNDED_EMPTY.values(), ids=UNBOUNDED_EMPTY.keys())
def test_zero_sized_arrays_with_impossible_shapes_raise_wire_error(pipe, data):
    ours, theirs = pipe
    ours.send_bytes(data)
    with pytest.raises(wire.WireError):
        wire.receive(theirs)


def test_receive_raises_eof_when_the_other_end_closed(pipe):
    ours, theirs = pipe
    ours.close()
    with pytest.raises(EOFError):
        wire.receive(theirs)


# --- the audit hook --------------------------------------------------------------------------------

class FakeSend:
    """A fake of the sandboxed process's `send`: keeps the messages the hook would send to the site."""

    def __init__(self):
        self.sent = []

    def __call__(self, header: dict, arrays=None) -> None:
        self.sent.append(header)


@pytest.fixture
def bounds(tmp_path, monkeypatch):
    """(watch, fake send, read root, scratch, outside): a Watch over a read root and a scratch folder,
    in a process whose working folder is scratch (as the sandboxed process's is)."""
    read, scratch, outside = tmp_path / "app", tmp_path / "scratch", tmp_path / "site"
    for folder in (read, scratch, outside):
        folder.mkdir()
    (read / "federated.py").write_text("")
    (outside / "catalog.json").write_text("{}")
    monkeypatch.chdir(scratch)
    send = FakeSend()
    return confined.Watch(send, [str(read)], [str(scratch), os.devnull], lambda: "train"), send, read, scratch, outside


def verdict(watch, send, event: str, args: tuple):
    """What `watch` makes of one audit event: None (allowed), or (what, target) it reported and refused."""
    before = len(send.sent)
    try:
        watch(event, args)
    except PermissionError:
        message = send.sent[-1]
        assert len(send.sent) == before + 1 and message["kind"] == "stopped" and message["entry"] == "train"
        return message["what"], message["target"]
    assert len(send.sent) == before  # nothing reported when allowed
    return None


O_READ = os.O_RDONLY | os.O_CLOEXEC
# (mode, flags) as io.open raises the "open" event (mode "rb" is raised as "r"; os.open passes mode None)
WRITE_OPENS = [("w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC),
               ("a", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC),
               ("x", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC),
               ("r+", os.O_RDWR | os.O_CLOEXEC),
               (None, os.O_WRONLY),
               (None, os.O_RDWR),
               (None, os.O_CREAT)]


def test_open_for_reading_inside_the_read_roots_and_scratch_is_allowed(bounds):
    watch, send, read, scratch, _ = bounds
    for path in (str(read / "federated.py"), str(read), str(scratch / "notes.txt"), os.devnull):
        assert verdict(watch, send, "open", (path, "r", O_READ)) is None, path
        assert verdict(watch, send, "open", (path, None, O_READ)) is None, path


def test_open_for_reading_outside_is_a_read(bounds):
    watch, send, _, _, outside = bounds
    catalog = str(outside / "catalog.json")
    assert verdict(watch, send, "open", (catalog, "r", O_READ)) == ("read", catalog)
    assert verdict(watch, send, "open", ("/etc/passwd", None, O_READ)) == ("read", "/etc/passwd")


@pytest.mark.parametrize("mode,flags", WRITE_OPENS, ids=[f"{m}-{f}" for m, f in WRITE_OPENS])
def test_open_for_writing(bounds, mode, flags):
    watch, send, read, scratch, outside = bounds
    assert verdict(watch, send, "open", (str(scratch / "out.txt"), mode, flags)) is None
    assert verdict(watch, send, "open", (os.devnull, mode, flags)) is None
    for path in (str(outside / "catalog.json"), str(read / "federated.py")):  # readable is not writable
        assert verdict(watch, send, "open", (path, mode, flags)) == ("write", path)


def test_a_symlink_in_scratch_pointing_outside_counts_as_outside(bounds):
    watch, send, _, scratch, outside = bounds
    link = scratch / "link"
    link.symlink_to(outside / "catalog.json")
    assert verdict(watch, send, "open", (str(link), "r", O_READ)) == ("read", str(link))
    assert verdict(watch, send, "open", (str(link), "w", os.O_WRONLY | os.O_TRUNC)) == ("write", str(link))
    (scratch / "dir").symlink_to(outside)
    assert verdict(watch, send, "os.listdir", (str(scratch / "dir"),)) == ("read", str(scratch / "dir"))


def test_relative_and_bytes_paths_resolve_against_the_working_folder(bounds):
    watch, send, _, _, outside = bounds
    assert verdict(watch, send, "open", ("notes.txt", "w", os.O_WRONLY | os.O_CREAT)) is None  # cwd is scratch
    assert verdict(watch, send, "open", (b"notes.txt", "r", O_READ)) is None
    assert verdict(watch, send, "open", ("../site/catalog.json", "r", O_READ)) == ("read", "../site/catalog.json")
    assert verdict(watch, send, "open", (b"../site/catalog.json", None, os.O_WRONLY)) == ("write", "../site/catalog.json")
    assert verdict(watch, send, "open", (Path(outside / "catalog.json"), "r", O_READ)) == ("read", str(outside / "catalog.json"))
    assert verdict(watch, send, "open", (str(outside) + "-sibling/x", "r", O_READ))[0] == "read"  # a prefix is not a parent


def test_opening_a_file_descriptor_is_left_to_the_kernel(bounds):
    watch, send, *_ = bounds
    assert verdict(watch, send, "open", (3, "r", O_READ)) is None
    assert verdict(watch, send, "open", (3, "w", os.O_WRONLY)) is None


def test_listing_a_folder(bounds):
    watch, send, read, scratch, outside = bounds
    for event in ("os.listdir", "os.scandir"):
        assert verdict(watch, send, event, (str(read),)) is None
        assert verdict(watch, send, event, (str(scratch),)) is None
        assert verdict(watch, send, event, (str(outside),)) == ("read", str(outside))
        assert verdict(watch, send, event, (os.fsencode(outside),)) == ("read", str(outside))
        assert verdict(watch, send, event, (5,)) is None  # a descriptor: the kernel's


def test_changing_files_with_one_side_outside_scratch_is_a_write(bounds):
    watch, send, read, scratch, outside = bounds
    inside, there = str(scratch / "a"), str(outside / "catalog.json")
    assert verdict(watch, send, "os.remove", (inside, -1)) is None
    assert verdict(watch, send, "os.remove", (there, -1)) == ("write", there)
    assert verdict(watch, send, "os.remove", (str(read / "federated.py"), -1)) == ("write", str(read / "federated.py"))
    assert verdict(watch, send, "os.rename", (inside, str(scratch / "b"), -1, -1)) is None
    assert verdict(watch, send, "os.rename", (inside, there, -1, -1)) == ("write", there)
    assert verdict(watch, send, "os.rename", (there, inside, -1, -1)) == ("write", there)
    assert verdict(watch, send, "os.symlink", (inside, str(scratch / "ln"), -1)) is None
    assert verdict(watch, send, "os.symlink", (inside, there, -1)) == ("write", there)
    # A link in scratch to a file outside is refused too (reading through it would be)
    assert verdict(watch, send, "os.symlink", (there, str(scratch / "ln"), -1)) == ("write", there)
    assert verdict(watch, send, "os.mkdir", (str(outside / "new"), 0o777, -1)) == ("write", str(outside / "new"))


def test_programs_and_sockets_are_refused(bounds):
    watch, send, *_ = bounds
    assert verdict(watch, send, "subprocess.Popen", ("sh", ["sh", "-c", "id"], None, None)) == ("program", repr(("sh", ["sh", "-c", "id"])))
    assert verdict(watch, send, "os.system", (b"id",)) == ("program", repr((b"id",)))
    assert verdict(watch, send, "os.exec", ("/bin/sh", ["sh"], None)) == ("program", repr(("/bin/sh", ["sh"])))
    fake_socket = object()
    assert verdict(watch, send, "socket.__new__", (fake_socket, 2, 1, 0))[0] == "network"
    assert verdict(watch, send, "socket.connect", (fake_socket, ("127.0.0.1", 8002))) == ("network", repr((("127.0.0.1", 8002),)))


def test_signals(bounds):
    watch, send, *_ = bounds
    assert verdict(watch, send, "os.kill", (os.getpid(), signal.SIGTERM)) is None
    for pid in (os.getppid(), 0, -1, -os.getpid(), 1):
        assert verdict(watch, send, "os.kill", (pid, signal.SIGTERM)) == ("signal", repr(pid)), pid
    assert verdict(watch, send, "os.killpg", (os.getpgid(0), signal.SIGTERM)) == ("signal", repr(os.getpgid(0)))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert verdict(watch, send, "os.kill", (child.pid, signal.SIGTERM)) is None
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert verdict(watch, send, "os.kill", (child.pid, signal.SIGTERM)) == ("signal", repr(child.pid))  # reaped: no longer ours
    finally:
        child.kill()
        child.wait()


def test_other_events_are_allowed(bounds):
    watch, send, *_ = bounds
    for event, args in [("import", ("json", None, [], [], [])), ("exec", (compile("", "x", "exec"),)),
                        ("os.fork", ()), ("compile", (b"", "x"))]:
        assert verdict(watch, send, event, args) is None, event


def test_installed_hook_reports_and_refuses_real_opens(tmp_path):
    """The hook as `confined` installs it, in a process of its own (an audit hook cannot be removed)."""
    allowed = tmp_path / "app"
    allowed.mkdir()
    (allowed / "data.txt").write_text("released")
    script = textwrap.dedent(f"""
        import json, os, sys
        from caia_jupyter.site.confined import Watch
        sent = []
        sys.addaudithook(Watch(sent.append, [{str(allowed)!r}], [os.getcwd()], lambda: "train"))
        outcome = {{"inside": open({str(allowed / "data.txt")!r}).read()}}
        try:
            open("/etc/passwd").read()
            outcome["passwd"] = "read"
        except PermissionError as e:
            outcome["passwd"] = e.strerror
        outcome["sent"] = sent
        print(json.dumps(outcome))
    """)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=scratch, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["inside"] == "released"
    assert outcome["passwd"] == "the site's sandbox does not allow this (read)"
    assert outcome["sent"] == [{"kind": "stopped", "what": "read", "entry": "train", "target": "/etc/passwd"}]


# --- the sandboxed process restricts itself first ----------------------------------------------------

def test_confined_restricts_itself_before_numpy_or_torch_load_and_while_one_thread(tmp_path):
    """`python -m caia_jupyter.site.confined` up to `landlock.restrict`: a harness records what is loaded
    then, and fails the restriction (so nothing heavy loads after it)."""
    harness = textwrap.dedent("""
        import os, runpy, sys, threading
        from caia_jupyter.site import landlock

        def recorder(read, write):
            seen = {"numpy": "numpy" in sys.modules, "torch": "torch" in sys.modules,
                    "pandas": "pandas" in sys.modules, "threads": len(os.listdir("/proc/self/task")),
                    "scratch": any(p.endswith("scratch") for p in write)}
            raise RuntimeError(repr(seen))

        landlock.restrict = recorder
        runpy.run_module("caia_jupyter.site.confined", run_name="__main__")
    """)
    import socket

    (tmp_path / "scratch").mkdir()
    ours, theirs = socket.socketpair()
    with theirs:
        process = subprocess.Popen([sys.executable, "-s", "-P", "-c", harness, str(theirs.fileno())], cwd=tmp_path / "scratch",
                                   env={"PATH": os.defpath, "PYTHONPATH": str(REPO)}, pass_fds=[theirs.fileno()])
    from multiprocessing.connection import Connection

    conn = Connection(ours.detach())
    try:
        wire.send(conn, {"op": "start", "root": str(tmp_path), "env": {"PATH": os.defpath}, "landlock": True,
                         "site": "site-1", "params": {}, "rounds": 1, "datasets": {}, "module_sha256": "0" * 64,
                         "threads": None})
        header, _ = wire.receive(conn)
    finally:
        conn.close()
        process.wait(30)
    assert header["kind"] == "failed" and header["report"]["category"] == "site_error"
    assert header["record"]["message"] == ("the sandbox could not be set up: "
                                           "{'numpy': False, 'torch': False, 'pandas': False, 'threads': 1, 'scratch': True}")


# --- Sandbox, with a fake child speaking the protocol ------------------------------------------------

def make_app(folder: Path, source: str) -> tuple[Path, Release]:
    """An admitted app folder holding `source` as federated.py, and its release (no datasets)."""
    (folder / "custom").mkdir(parents=True, exist_ok=True)
    data = textwrap.dedent(source).encode()
    (folder / "custom" / "federated.py").write_bytes(data)
    return folder, Release(site="site-1", bundle_id="b" * 64, datasets={}, params={}, rounds=2, approval="a",
                           files={"federated.py": hashlib.sha256(data).hexdigest()}, sandbox="landlock")


@pytest.fixture
def fake_child(tmp_path, monkeypatch):
    """Start `script` (Python run with its end of the socket pair, fd in argv[1]) instead of the
    sandboxed process, with the command, folder, environment and descriptors `Sandbox` gives it.
    `fake_child(script)` writes the script and returns a Sandbox of a minimal app, ready to start;
    `fake_child.commands` lists the commands the Sandbox asked for."""
    real_popen = subprocess.Popen
    commands, started = [], []

    def fake_popen(args, **kwargs):
        commands.append(list(args))
        started.append(real_popen([sys.executable, str(tmp_path / "fake_child.py"), args[-1]], **kwargs))
        return started[-1]

    def make(script: str) -> sandbox.Sandbox:
        (tmp_path / "fake_child.py").write_text(
            "import os, sys, time\nfrom multiprocessing.connection import Connection\nfrom caia_jupyter.site import wire\n"
            "conn = Connection(int(sys.argv[1]))\nstart, _ = wire.receive(conn)\n" + textwrap.dedent(script))
        monkeypatch.setattr(sandbox.subprocess, "Popen", fake_popen)
        app, release = make_app(tmp_path / "app", "def build_model(): pass\n")
        return sandbox.Sandbox(app, release)

    make.commands = commands
    yield make
    for process in started:  # a test that failed early leaves no process behind
        process.kill()
        process.wait()


WEIGHTS = {"w": np.ones((2, 3), np.float32)}
READY = "wire.send(conn, {'kind': 'ready'})\nrequest, weights = wire.receive(conn)\n"


def failure(box: sandbox.Sandbox, step) -> Failed:
    """The Failed that `step(box)` raises; the run's folder is gone after close()."""
    try:
        with pytest.raises(Failed) as raised:
            step(box)
    finally:
        box.close()
    assert box.root is not None and not box.root.exists()
    assert box.process.poll() is not None
    return raised.value


def test_child_gets_a_fixed_command_a_minimal_environment_and_one_descriptor(fake_child, monkeypatch, tmp_path):
    monkeypatch.setenv("CAIA_TEST_PARENT_SECRET", "site-key")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    seen = tmp_path / "seen.json"
    box = fake_child(f"""
        import json
        fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))
        with open({str(seen)!r}, 'w') as f:
            json.dump({{'env': dict(os.environ), 'cwd': os.getcwd(), 'fds': fds, 'start': start}}, f)
        wire.send(conn, {{'kind': 'ready'}})
        wire.receive(conn)
    """)
    box.start()
    root = box.root
    box.close()
    assert fake_child.commands == [[sys.executable, "-s", "-P", "-m", "caia_jupyter.site.confined", fake_child.commands[0][-1]]]
    seen = json.loads(seen.read_text())
    env = seen["env"]
    assert set(env) <= MINIMAL_ENV | set(sandbox.PASSED_ENV), set(env) - MINIMAL_ENV - set(sandbox.PASSED_ENV)
    assert "CAIA_TEST_PARENT_SECRET" not in env and env["OMP_NUM_THREADS"] == "3"
    assert env["HOME"] == env["TMPDIR"] == seen["cwd"] == str(root / "scratch")
    assert env["PYTHONPATH"] == str(REPO)
    # stdin (/dev/null), stdout and stderr (the site's), its end of the pair, and the listing's own descriptor
    assert int(fake_child.commands[0][-1]) in seen["fds"] and len(seen["fds"]) == 5, seen["fds"]
    assert seen["start"]["op"] == "start" and seen["start"]["site"] == "site-1" and seen["start"]["datasets"] == {}


def test_a_well_behaved_fake_child_runs_a_round(fake_child):
    box = fake_child(READY + textwrap.dedent("""
        wire.send(conn, {'kind': 'result', 'num_samples': 5, 'train': {'loss': 0.5}, 'eval': {'acc': 1}},
                  {name: array * 2 for name, array in weights.items()})
        wire.receive(conn)
    """))
    box.start()
    result = box.round(WEIGHTS, 0)
    box.close()
    assert (result.num_samples, result.train_metrics, result.eval_metrics) == (5, {"loss": 0.5}, {"acc": 1.0})
    np.testing.assert_array_equal(result.weights["w"], WEIGHTS["w"] * 2)
    assert not box.root.exists()


def test_a_dataset_the_release_does_not_hold_is_refused_by_category(fake_child, tmp_path):
    seen = tmp_path / "seen.json"
    box = fake_child(f"""
        import json
        answers = []
        for name in ('patients', ['not', 'a', 'name'], None):
            wire.send(conn, {{'kind': 'dataset', 'name': name}})
            answers.append(wire.receive(conn)[0])
        open({str(seen)!r}, 'w').write(json.dumps(answers))
        wire.send(conn, {{'kind': 'ready'}})
        wire.receive(conn)
    """)
    box.start()
    box.close()
    assert json.loads(seen.read_text()) == [{"kind": "dataset", "failure": "dataset_not_released"}] * 3


@pytest.mark.parametrize("script,category", [
    ("os._exit(0)", "exited"),
    ("conn.close(); time.sleep(30)", "exited"),
    ("wire.send(conn, {'kind': 'surprise'})", "site_error"),
    ("conn.send_bytes(b'not a frame')", "site_error"),
    ("conn.send_bytes(b'\\x00\\x00\\x00\\x02[]')", "site_error"),
    ("conn.send_bytes(b'')", "site_error"),
    ("wire.send(conn, {'kind': 'dataset', 'name': 'x'}, {'w': __import__('numpy').zeros(2)}); conn.send_bytes(b'\\x00')", "site_error"),
    ("wire.send(conn, {'kind': 'stopped', 'what': 'network', 'entry': 'train', 'target': ('127.0.0.1', 9)})", "sandbox_network"),
    ("wire.send(conn, {'kind': 'stopped', 'what': 'teleport', 'entry': 'nowhere', 'target': 'x' * 10000})", "unknown"),
    ("wire.send(conn, {'kind': 'failed', 'report': {'entry': 'train', 'round': 0, 'category': 'raised'}, 'record': {'m': 1}})", "raised"),
    ("wire.send(conn, {'kind': 'failed', 'report': 'garbage', 'record': ['not', 'a', 'dict']})", "unknown"),
], ids=["exits", "closes its end", "unexpected kind", "not a frame", "header a list", "empty frame", "then a one-byte frame",
        "stopped network", "stopped unknown", "failed", "failed garbage"])
def test_what_the_child_does_at_start_ends_in_failed(fake_child, script, category, monkeypatch):
    monkeypatch.setattr(sandbox, "GRACE", 0.2)
    box = fake_child(script)
    failed = failure(box, sandbox.Sandbox.start)
    assert failed.report["category"] == category
    assert failed.report["entry"] in ("build_model", "load_data", "train", "evaluate", "runtime")


def test_stopped_message_keeps_its_attempt_at_the_site(fake_child):
    box = fake_child("wire.send(conn, {'kind': 'stopped', 'what': 'read', 'entry': 'load_data', 'target': '/site/catalog.json'})")
    failed = failure(box, sandbox.Sandbox.start)
    assert failed.report == {"entry": "load_data", "round": None, "category": "sandbox_read"}
    assert failed.record == {"sandbox": "read", "attempt": "/site/catalog.json"}


BAD_RESULTS = {
    "num_samples a bool": ({"num_samples": True, "train": {}, "eval": {}}, "bad_num_samples", "train"),
    "num_samples negative": ({"num_samples": -1, "train": {}, "eval": {}}, "bad_num_samples", "train"),
    "num_samples beyond the bound": ({"num_samples": 2**53, "train": {}, "eval": {}}, "bad_num_samples", "train"),
    "num_samples a float": ({"num_samples": 3.0, "train": {}, "eval": {}}, "bad_num_samples", "train"),
    "num_samples a string": ({"num_samples": "3", "train": {}, "eval": {}}, "bad_num_samples", "train"),
    "num_samples missing": ({"train": {}, "eval": {}}, "bad_num_samples", "train"),
    "train metric badly named": ({"num_samples": 3, "train": {"a b": 1.0}, "eval": {}}, "bad_metrics", "train"),
    "eval metric badly named": ({"num_samples": 3, "train": {}, "eval": {"x" * 65: 1.0}}, "bad_metrics", "evaluate"),
    "metric not a number": ({"num_samples": 3, "train": {"loss": "low"}, "eval": {}}, "bad_metrics", "train"),
    "metric a bool": ({"num_samples": 3, "train": {"ok": True}, "eval": {}}, "bad_metrics", "train"),
    "metrics not a dict": ({"num_samples": 3, "train": [1], "eval": {}}, "bad_metrics", "train"),
}


@pytest.mark.parametrize("result,category,entry", BAD_RESULTS.values(), ids=BAD_RESULTS.keys())
def test_a_forged_round_result_is_failed_by_category(fake_child, result, category, entry):
    box = fake_child(READY + f"wire.send(conn, {{'kind': 'result', **{result!r}}})\nwire.receive(conn)\n")
    box.start()
    failed = failure(box, lambda box: box.round(WEIGHTS, 1))
    assert failed.report == {"entry": entry, "round": 1, "category": category}


DP = {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}
BAD_ACCOUNTING = {
    "no accounting": {},
    "history a string": {"dp_history": "[[1.0, 0.1, 3]]"},
    "noise a string": {"dp_history": [["1.0", 0.1, 3]]},
    "sample rate negative": {"dp_history": [[1.0, -0.1, 3]]},
    "steps a bool": {"dp_history": [[1.0, 0.1, True]]},
    "steps a float": {"dp_history": [[1.0, 0.1, 3.0]]},
    "noise below the site's": {"dp_history": [[0.1, 0.1, 3]]},
}


@pytest.mark.parametrize("accounting", BAD_ACCOUNTING.values(), ids=BAD_ACCOUNTING.keys())
def test_a_dp_round_without_accounting_the_site_accepts_is_not_sent(fake_child, accounting):
    from caia_jupyter.site import flare_client
    from caia_jupyter.site.dp_sgd import Spent

    sent = {"num_samples": 3, "train": {}, "eval": {}, **accounting}
    box = fake_child(READY + f"wire.send(conn, {{'kind': 'result', **{sent!r}}}, weights)\nwire.receive(conn)\n")
    box.release = dataclasses.replace(box.release, privacy=DP)
    box.start()
    result = box.round(WEIGHTS, 1)  # what the process sent is untrusted: the site's runtime accounts it
    box.close()
    with pytest.raises(Failed) as failed:
        flare_client.check_private(DP, 1, result, Spent(), 100, 1)
    assert failed.value.report == {"entry": "train", "round": 1, "category": "not_private"}


def test_a_dp_round_with_a_code_metric_named_epsilon_is_failed(fake_child):
    sent = {"num_samples": 3, "train": {"epsilon": 0.1}, "eval": {}, "dp_history": [[1.0, 0.1, 3]]}
    box = fake_child(READY + f"wire.send(conn, {{'kind': 'result', **{sent!r}}})\nwire.receive(conn)\n")
    box.release = dataclasses.replace(box.release, privacy=DP)
    box.start()
    failed = failure(box, lambda box: box.round(WEIGHTS, 1))
    assert failed.report == {"entry": "train", "round": 1, "category": "bad_metrics"}


def test_a_dp_round_carries_the_history_the_process_reported(fake_child):
    box = fake_child(READY + "assert start['privacy']['epsilon'] == 3.0\n"
                     "wire.send(conn, {'kind': 'result', 'num_samples': 3, 'train': {}, 'eval': {}, "
                     "'dp_history': [[1.5, 0.1, 4]]}, weights)\nwire.receive(conn)\n")
    box.release = dataclasses.replace(box.release, privacy=DP)
    box.start()
    result = box.round(WEIGHTS, 0)
    box.close()
    assert result.dp_history == [[1.5, 0.1, 4]] and box.released_rows == 0


def test_forged_final_metrics_are_failed_by_category(fake_child):
    box = fake_child(READY + "wire.send(conn, {'kind': 'metrics', 'metrics': {'../etc': 1}})\nwire.receive(conn)\n")
    box.start()
    failed = failure(box, lambda box: box.evaluate(WEIGHTS, 2))
    assert failed.report == {"entry": "evaluate", "round": 2, "category": "bad_metrics"}


def test_a_process_ending_in_a_round_is_exited(fake_child):
    box = fake_child(READY + "os._exit(3)\n")
    box.start()
    failed = failure(box, lambda box: box.round(WEIGHTS, 0))
    assert failed.report == {"entry": "runtime", "round": 0, "category": "exited"}


def test_close_kills_a_process_that_ignores_the_close_request(fake_child, monkeypatch):
    monkeypatch.setattr(sandbox, "GRACE", 0.3)
    box = fake_child("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwire.send(conn, {'kind': 'ready'})\n"
                     "wire.receive(conn)\ntime.sleep(60)\n")
    box.start()
    began = time.monotonic()
    box.close()
    assert time.monotonic() - began < 5
    assert box.process.returncode == -signal.SIGKILL
    assert not box.root.exists()


def test_close_before_start_and_twice_is_harmless(fake_child):
    box = fake_child("wire.send(conn, {'kind': 'ready'})\nwire.receive(conn)\n")
    box.close()  # nothing started
    box.start()
    box.close()
    box.close()
    assert box.process.returncode == 0 and not box.root.exists()


# What a process may send that no message handler expects: each fails the site, promptly (GRACE is
# shortened: the fake never ends by itself), never an exception other than Failed.
UNEXPECTED = {
    "a stopped message with an unhashable what": (
        "wire.send(conn, {'kind': 'stopped', 'what': ['read'], 'entry': 'train', 'target': 'x'})\ntime.sleep(60)\n",
        {"unknown"}),
    "a frame length claiming 2**62 bytes (multiprocessing's 8-byte form after -1)": (
        "import struct\nos.write(conn.fileno(), struct.pack('!i', -1) + struct.pack('!Q', 2**62))\ntime.sleep(60)\n",
        {"site_error", "exited"}),
}


@pytest.mark.parametrize("script, categories", UNEXPECTED.values(), ids=UNEXPECTED.keys())
def test_an_unexpected_message_fails_the_site_and_allocates_nothing(fake_child, monkeypatch, script, categories):
    monkeypatch.setattr(sandbox, "GRACE", 0.2)
    box = fake_child(script)
    try:
        failed = failure(box, sandbox.Sandbox.start)
    finally:
        box.close()
    assert failed.report["category"] in categories


# --- Sandbox, with the real sandboxed process (it imports torch: several seconds each) ---------------

TRAIN_RAISES = """
    import torch
    def build_model():
        return torch.nn.Linear(2, 1)
    def load_data(ctx):
        return None
    def train(model, data, ctx):
        raise ValueError("no such file /site/secret/catalog.json")
    def evaluate(model, data, ctx):
        return {"loss": 1.0}
"""


def linear_weights() -> dict:
    return {"weight": np.zeros((1, 2), np.float32), "bias": np.zeros(1, np.float32)}


@pytest.mark.slow
def test_real_process_the_codes_own_exception_is_raised_and_its_story_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIA_TEST_PARENT_SECRET", "site-key")
    box = sandbox.Sandbox(*make_app(tmp_path / "app", TRAIN_RAISES))
    try:
        box.start()
        environ = Path(f"/proc/{box.process.pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert names <= MINIMAL_ENV | set(sandbox.PASSED_ENV), names
        with pytest.raises(Failed) as raised:
            box.round(linear_weights(), 0)
    finally:
        box.close()
    assert raised.value.report == {"entry": "train", "round": 0, "category": "raised"}
    record = raised.value.record
    assert record["exception"] == "ValueError" and "/site/secret/catalog.json" in record["message"]
    assert "in train" in record["traceback"]
    assert not box.root.exists() and box.process.returncode is not None


@pytest.mark.slow
def test_real_process_ending_in_train_is_exited(tmp_path):
    source = TRAIN_RAISES.replace('raise ValueError("no such file /site/secret/catalog.json")', "import os; os._exit(7)")
    box = sandbox.Sandbox(*make_app(tmp_path / "app", source))
    try:
        box.start()
        with pytest.raises(Failed) as raised:
            box.round(linear_weights(), 0)
    finally:
        box.close()
    assert raised.value.report == {"entry": "runtime", "round": 0, "category": "exited"}
    assert box.process.returncode == 7
    assert not box.root.exists()


@pytest.fixture
def released_app(tmp_path):
    """An app whose release holds dataset "tiny": columns a and b of a table that also has a column secret."""
    from caia_jupyter.contracts import schema

    table = tmp_path / "site" / "tiny.csv"
    table.parent.mkdir()
    table.write_text("a,b,secret\n1,0.5,x\n2,1.5,y\n")
    read = schema.detect(table)
    columns = [column for column in schema.columns_of(table, read) if column["name"] in ("a", "b")]
    app, release = make_app(tmp_path / "app", "def build_model(): pass\n")
    return app, Release(**{**release.__dict__, "datasets": {"tiny": {"path": str(table), "read": read, "columns": columns}}})


ASK_THREE_TIMES = """
    import json, pickle
    answers, data = [], []
    for _ in range(3):
        wire.send(conn, {'kind': 'dataset', 'name': 'tiny'})
        answers.append(wire.receive(conn)[0])
        data.append(sorted(os.listdir(os.path.join('..', 'data'))))
        frame = pickle.load(open(os.path.join('..', 'data', answers[-1]['file']), 'rb'))
    open(SEEN, 'w').write(json.dumps({'answers': answers, 'columns': list(frame.columns), 'rows': frame.values.tolist(),
                                      'data': data}))
    wire.send(conn, {'kind': 'ready'})
    wire.receive(conn)
"""


def test_a_released_dataset_is_copied_with_exactly_its_approved_columns(fake_child, released_app, tmp_path, monkeypatch):
    seen = tmp_path / "seen.json"
    fake_child(f"SEEN = {str(seen)!r}\n" + textwrap.dedent(ASK_THREE_TIMES))
    box = sandbox.Sandbox(*released_app)
    box.start()
    box.close()
    seen = json.loads(seen.read_text())
    assert seen["columns"] == ["a", "b"] and seen["rows"] == [[1, 0.5], [2, 1.5]]
    assert all("file" in answer for answer in seen["answers"])
    assert not box.root.exists()


def test_a_dataset_copy_is_deleted_once_read(fake_child, released_app, tmp_path):
    seen = tmp_path / "seen.json"
    fake_child(f"SEEN = {str(seen)!r}\n" + textwrap.dedent(ASK_THREE_TIMES))
    box = sandbox.Sandbox(*released_app)
    box.start()
    box.close()
    assert [len(files) for files in json.loads(seen.read_text())["data"]] == [1, 1, 1]


ORDINARY = """
    import io, os, platform, tempfile, zoneinfo
    import pandas as pd
    import torch
    def build_model():
        return torch.nn.Linear(2, 1)
    def load_data(ctx):
        return None
    def train(model, data, ctx):
        with tempfile.TemporaryDirectory() as folder:  # in scratch: $TMPDIR
            pd.DataFrame({"a": [1, 2]}).to_csv(os.path.join(folder, "t.csv"), index=False)
            assert pd.read_csv(os.path.join(folder, "t.csv"))["a"].sum() == 3
        assert len(pd.read_csv(io.StringIO("a,b\\n1,2\\n"))) == 1
        assert zoneinfo.ZoneInfo("Europe/Paris").key == "Europe/Paris"
        assert platform.platform() and platform.processor() is not None
        assert "VmRSS" in open("/proc/self/status").read()
        torch.save(model.state_dict(), "model.pt")
        model.load_state_dict(torch.load("model.pt"))
        return {"num_samples": 1}
    def evaluate(model, data, ctx):
        return {"loss": 1.0}
"""


@pytest.mark.slow
def test_real_process_ordinary_library_calls_stay_inside_the_sandbox(tmp_path):
    """What research code does without meaning to reach out: temporary folders, CSV reads (pandas
    reads the CPU quota), time zones, the platform's description, its own memory use, torch files."""
    box = sandbox.Sandbox(*make_app(tmp_path / "app", ORDINARY))
    try:
        box.start()
        result = box.round(linear_weights(), 0)
    finally:
        box.close()
    assert result.num_samples == 1 and result.eval_metrics == {"loss": 1.0}


@pytest.mark.slow
def test_a_preforked_process_runs_ordinary_code_as_a_started_one_does(tmp_path):
    """The simulator's path: the process forked ahead (`prefork`) from one that imported torch
    (whose compiler stack fixes tempfile's folder to /tmp) serves the same code inside its bounds."""
    _, release = make_app(tmp_path / "app", ORDINARY)
    script = textwrap.dedent(f"""
        import numpy as np, torch, torch._dynamo
        from caia_jupyter.site import sandbox
        from caia_jupyter.site.release import Release
        sandbox.prefork()
        release = Release(**{dataclasses.asdict(release)!r})
        box = sandbox.Sandbox({str(tmp_path / "app")!r}, release)
        try:
            box.start()
            forked = isinstance(box.process, sandbox.ForkedProcess)
            result = box.round({{"weight": np.zeros((1, 2), np.float32), "bias": np.zeros(1, np.float32)}}, 0)
        finally:
            box.close()
        print(forked, result.num_samples)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.split() == ["True", "1"], done.stderr[-2000:]


def test_the_sweep_removes_a_dead_runs_folder_and_bears_another_sweep_removing_it_first(tmp_path, monkeypatch):
    """Sites of one machine start together: a folder another site's sweep removed between the listing
    and the look at it is passed over, not an error that fails the site."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{sandbox.PREFIX}{dead.stdout.strip()}-abc"
    (stale / "data").mkdir(parents=True)
    alive = tmp_path / f"{sandbox.PREFIX}{os.getpid()}-def"
    alive.mkdir()
    vanished = tmp_path / f"{sandbox.PREFIX}{dead.stdout.strip()}-gone"  # listed, then removed by another sweep
    listed = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*listed(self, pattern), vanished])
    sandbox._sweep()
    assert not stale.exists() and alive.exists()
