"""The site's sandbox, on NVFLARE's simulator and on a real POC: an approved "curious" bundle whose
`train` tries one thing beyond its release at site-2 is stopped there; the run goes on with site-1;
the researcher sees only the category; nothing outside the sandbox's scratch folder changes; the
site keeps the attempt. Then the site's sandbox policy on a kernel without Landlock, and the
example notebook trained with and without the sandbox."""

from __future__ import annotations

import json
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from caia_jupyter.contracts import failures
from caia_jupyter.contracts.failures import FAILURE_FILE, REASONS
from caia_jupyter.researcher.runs import Run, local_failure_record
from caia_jupyter.reviewer import signing
from caia_jupyter.site import audit, landlock, sites
from caia_jupyter.targets.submit import submit
from conftest import REPO, approve, build_validated, make_site, set_source
from leaks import what_the_researcher_sees

pytestmark = pytest.mark.slow
CURIOUS = "site-2"  # the one site where the code tries; site-1 runs it as any approved bundle
# The site's table holds a column the bundle does not request (the request is the sample's x1, x2, label).
WIDE_CSV = "x1,x2,label,mrn\n" + "".join(f"{i * 0.1:.1f},{(i % 7) * 0.3:.1f},{i % 2},MRN-{7000 + i}\n" for i in range(24))


@dataclass
class Place:
    """What the curious code aims at, at CURIOUS: real paths of its site, the test's listener, a marker."""

    site_dir: Path
    key: Path  # the site's startup kit private key
    port: int
    marker: Path  # a file `sh -c` would create

    @property
    def table(self) -> Path:
        return self.site_dir / "wide.csv"


# case -> (the attempt, run at CURIOUS only, with `place` baked in; its category; what the site's record names)
ATTEMPTS = {
    "catalog": (lambda p: f"open({str(p.site_dir / 'catalog.json')!r}).read()", "sandbox_read",
                lambda p: str(p.site_dir / "catalog.json")),
    "other_dataset": (lambda p: f"open({str(p.site_dir / 'other.csv')!r}).read()", "sandbox_read",
                      lambda p: str(p.site_dir / "other.csv")),
    "startup_kit_key": (lambda p: f"open({str(p.key)!r}, 'rb').read()", "sandbox_read", lambda p: str(p.key)),
    "unrequested_column": (lambda p: f"import csv\n        [row['mrn'] for row in csv.DictReader(open({str(p.table)!r}))]",
                           "sandbox_read",
                           lambda p: str(p.table)),
    "etc_passwd": (lambda p: "open('/etc/passwd').read()", "sandbox_read", lambda p: "/etc/passwd"),
    "write_site_dir": (lambda p: f"open({str(p.site_dir / 'planted.txt')!r}, 'w').write('x')", "sandbox_write",
                       lambda p: str(p.site_dir / "planted.txt")),
    "tcp_connect": (lambda p: f"import socket\n        socket.create_connection(('127.0.0.1', {p.port}), timeout=5)",
                    "sandbox_network", lambda p: str(p.port)),
    "sh_c": (lambda p: f"import subprocess\n        subprocess.run(['sh', '-c', 'touch {p.marker}'])", "sandbox_program",
             lambda p: str(p.marker)),
    "signal_parent": (lambda p: "import os, signal\n        os.kill(os.getppid(), signal.SIGUSR1)", "sandbox_signal",
                      lambda p: ""),
}
SWALLOWED = ("etc_passwd", "tcp_connect")  # also tried inside `try/except Exception: pass`, the code going on


def curious(attempt: str, swallow: bool):
    """Edit the corpus notebook: train tries `attempt` at CURIOUS, at each round (local validation,
    whose ctx.site is "local-validation", never tries); with `swallow`, it ignores the refusal and trains on."""
    body = attempt
    if swallow:
        inner = attempt.replace("\n", "\n    ")
        body = f"try:\n            {inner}\n        except Exception:\n            pass"

    def edit(nb):
        set_source(nb, "    x, y = data\n    optimizer", f"    x, y = data\n    if ctx.site == {CURIOUS!r}:\n        {body}\n    optimizer")

    return edit


def add_datasets(site_dir: Path) -> None:
    """The site's released table `wide` (with the unrequested column mrn) and a dataset `other` the bundle does not request."""
    site = sites.open_site(site_dir)
    (site_dir / "wide.csv").write_text(WIDE_CSV)
    sites.add_dataset(site, "wide", site_dir / "wide.csv")
    (site_dir / "other.csv").write_text("diagnosis,age\nC50,61\n")
    sites.add_dataset(site, "other", site_dir / "other.csv")


def snapshot(*roots: Path) -> dict:
    """Every file under `roots` (or the root itself): path -> (bytes, mtime_ns)."""
    files = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file():
                files[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return files


def unaudited(files: dict) -> dict:
    """A snapshot without the sites' audit logs, which each site's guard appends to at admission."""
    return {path: entry for path, entry in files.items() if Path(path).name != audit.AUDIT}


def assert_only_guard_records_appended(before: dict, after: dict) -> None:
    """Each audit log in `after` is its version in `before` with only the guard's admission or
    refusal records appended, and its chain intact: the approved code wrote nothing there."""
    for path in after.keys() - unaudited(after).keys():
        old, new = before.get(path, (b"",))[0], after[path][0]
        assert new.startswith(old), f"{path} was rewritten, not appended to"
        appended = [json.loads(line) for line in new[len(old):].splitlines()]
        assert appended and {r["event"] for r in appended} <= {"admission", "refusal"}, appended
        records, problems = audit.verify(Path(path).parent)
        assert problems == [] and records, problems


def contains(text: str, secret: str) -> bool:
    """Whether `secret` appears in `text`; a port is matched as a whole number (not inside a metric's digits)."""
    return bool(re.search(rf"(?<!\d){re.escape(secret)}(?!\d)", text)) if secret.isdigit() else secret in text


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def assert_nothing_accepted(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


def check_run(run: Run, case: str, place: Place, record: Path, line: str, before: dict, roots, caia, server) -> None:
    """What every curious run must show: site-1 finished the run, site-2 is reported with exactly its
    category line, the researcher sees no trace of the target, nothing changed, the site kept the attempt."""
    _, category, target = ATTEMPTS[case]
    assert run.status == "finished", run.message
    assert run.sites == {"site-1": "done", CURIOUS: "failed"}
    assert run.failures == {CURIOUS: line}
    assert run.message == f"2 rounds with site-1; continued without {CURIOUS} (min_clients 1); {CURIOUS} left at round 0: {line}"
    assert set(run.metrics()["site"]) == {"site-1"} and run.global_model is not None
    code, status, _ = caia("status", run.path, "--json")
    seen = what_the_researcher_sees(run, status) + "\n".join(run.notes)
    for secret in {target(place), str(place.site_dir), str(place.key), str(place.marker), "MRN-70"} - {""}:
        assert not contains(seen, secret), f"the researcher sees {secret!r}"
    after = snapshot(*roots)
    assert unaudited(after) == unaudited(before), "a file outside the sandbox's scratch folder changed"
    assert_only_guard_records_appended(before, after)
    assert not place.marker.exists() and not (place.site_dir / "planted.txt").exists()
    assert_nothing_accepted(server)
    kept = json.loads(record.read_text())
    assert kept["sandbox"] == category.removeprefix("sandbox_")
    assert target(place) in kept["attempt"]


CASES = [pytest.param(case, False, id=case) for case in ATTEMPTS] + [
    pytest.param(case, True, id=f"{case}-swallowed") for case in SWALLOWED]


# -- on NVFLARE's simulator ------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "swallow"), CASES)
def test_the_simulator_stops_a_curious_site_and_the_run_goes_on(tmp_path, caia, listener, case, swallow):
    made = [make_site(tmp_path / "sites", name) for name in ("site-1", CURIOUS)]
    for site in made:
        add_datasets(site.path)
    # A simulated site has no startup kit: a stand-in key in a kit-like folder beside the site directory.
    key = tmp_path / "sites" / f"{CURIOUS}-kit" / "startup" / "client.key"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN PRIVATE KEY-----\nSTAND-IN\n-----END PRIVATE KEY-----\n")
    place = Place(made[1].path, key, listener.getsockname()[1], tmp_path / "sh-c-was-here")
    built = build_validated(tmp_path / "nb", edit=curious(ATTEMPTS[case][0](place), swallow))
    for site in made:
        approve(site, built.id, {"tiny": "wide"})
    roots = (tmp_path / "sites", tmp_path / "nb")
    before = snapshot(*roots)
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    run.wait(timeout=300)
    assert json.loads((run.path / "sites.json").read_text())[CURIOUS]["sandbox"] == "landlock"
    record = local_failure_record(run.path, CURIOUS)
    line = f"{CURIOUS} failed in train at round 0: {REASONS[ATTEMPTS[case][1]]}; full record on this machine: {record}"
    check_run(run, case, place, record, line, before, roots, caia, listener)


# -- on a real NVFLARE POC (server and three site processes on loopback) ----------------------------


def site_processes(poc, name: str) -> set[int]:
    """The pids of site `name`'s long-lived NVFLARE processes (its daemon and its client process)."""
    return {p.pid for p in poc.processes() if re.search(rf"/prod_00/{name}(/|\s|$)", " ".join(p.cmdline()))
            and "worker_process" not in " ".join(p.cmdline())}


@pytest.mark.parametrize(("case", "swallow"), CASES)
def test_a_poc_site_stops_a_curious_bundle_and_the_run_goes_on(poc, tmp_path, caia, listener, case, swallow):
    for name in ("site-1", CURIOUS):
        if "wide" not in sites.open_site(poc.site_dir(name)).catalog:
            add_datasets(poc.site_dir(name))
    key = poc.kits / CURIOUS / "startup" / "client.key"  # the site's real startup kit
    assert key.is_file()
    place = Place(poc.site_dir(CURIOUS), key, listener.getsockname()[1], tmp_path / "sh-c-was-here")
    built = build_validated(tmp_path / "nb", edit=curious(ATTEMPTS[case][0](place), swallow))
    for name in ("site-1", CURIOUS):
        signing.approve(sites.open_site(poc.site_dir(name)), built.id, {"tiny": "wide"}, poc.reviewer_key(name))
    roots = (poc.site_dir(CURIOUS), poc.kits / CURIOUS / "startup", poc.kits / CURIOUS / "local")
    before, alive = snapshot(*roots), site_processes(poc, CURIOUS)
    run = submit(built.path, ["site-1", CURIOUS], target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    run.wait(timeout=300)
    assert alive and site_processes(poc, CURIOUS) >= alive, "the curious site's NVFLARE processes did not survive the run"
    record = poc.kits / CURIOUS / run.outcome["job_id"] / f"app_{CURIOUS}" / FAILURE_FILE
    line = f"{CURIOUS} failed in train at round 0: {REASONS[ATTEMPTS[case][1]]}"
    check_run(run, case, place, record, line, before, roots, caia, listener)


# -- the site's policy on a kernel without Landlock (the test seam lowers the ABI to 0) ----------------


def plain_run(tmp_path, monkeypatch, abi: int | None, policies: dict[str, str | None]) -> tuple[Run, str]:
    """The corpus notebook at sites with `policies` (None: the simulator's default), submitted from a
    process whose kernel reports Landlock ABI `abi` (None: the real one); (finished run, bundle id)."""
    if abi is not None:
        monkeypatch.setenv(landlock.ABI_ENV, str(abi))  # the simulator's launcher and its sites inherit it
    built = build_validated(tmp_path / "nb")
    made = []
    for name, policy in policies.items():
        site = make_site(tmp_path / "sites", name)
        made.append(sites.set_sandbox(site.path, policy) if policy else site)
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    run.wait(timeout=300)
    return run, built.id


def test_required_refuses_and_preferred_warns_on_a_kernel_without_landlock(tmp_path, monkeypatch):
    run, bundle_id = plain_run(tmp_path, monkeypatch, 0, {"site-1": "required", "site-2": "preferred"})
    assert run.status == "finished", run.message
    assert run.refusals == {"site-1": f"site-1 refused bundle {bundle_id}: its policy requires the sandbox and this "
                                      "machine's kernel has no Linux Landlock; run the site on Linux 5.13 or later with "
                                      "Landlock enabled (see `caia site show`), or set its sandbox policy to preferred"}
    assert run.sites == {"site-1": "refused", "site-2": "done"}
    assert "without site-1, which refused the bundle (min_clients 1)" in run.message
    assert run.notes == [failures.UNCONFINED.format(site="site-2")]


def test_preferred_without_landlock_trains_the_same_model_as_the_sandbox(tmp_path, monkeypatch):
    sandboxed, _ = plain_run(tmp_path / "landlock", monkeypatch, None, {"site-1": None, "site-2": None})
    unconfined, _ = plain_run(tmp_path / "abi0", monkeypatch, 0, {"site-1": None, "site-2": None})
    for run, placed, notes in ((sandboxed, "landlock", []), (unconfined, "process",
                                                              [failures.UNCONFINED.format(site=s) for s in ("site-1", "site-2")])):
        assert run.status == "finished", run.message
        assert {a["sandbox"] for a in json.loads((run.path / "sites.json").read_text()).values()} == {placed}
        assert sorted(run.notes) == notes
    expected, got = (torch.load(r.global_model, weights_only=True) for r in (sandboxed, unconfined))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


# -- the example notebook with the sandbox and without ----------------------------------------------


def test_the_example_notebook_trains_to_the_same_accuracy_with_and_without_the_sandbox(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import simulator as bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    built, made = bench.setup(tmp_path / "work", 3, 5)
    runs = {}
    for policy in ("off", "preferred"):
        for site in made:
            sites.set_sandbox(site.path, policy)
        run = submit(built.path, [s.path for s in made], runs_root=tmp_path / f"runs-{policy}")
        assert run.wait(timeout=600) == "finished", run.message
        placed = {a["sandbox"] for a in json.loads((run.path / "sites.json").read_text()).values()}
        assert placed == {"off" if policy == "off" else "landlock"}
        runs[policy] = run
    off, sandboxed = (runs[p].final_metrics()["global"]["accuracy"] for p in ("off", "preferred"))
    assert 0.5 < off <= 1 and sandboxed == off
    expected, got = (torch.load(runs[p].global_model, weights_only=True) for p in ("off", "preferred"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
