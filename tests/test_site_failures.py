"""One site's failure: it leaves the run, named with its entry point and round; the others keep their
own state; the run goes on while min_clients holds and says so, else it ends naming the site.

Case 16 (tests/cases/16-one-site-fails-others-continue): three sites, min_clients=2; site-3 holds 6
rows and its own `assert len(df) >= 20, f"only {len(df)} rows"` in load_data fails there."""

import json
import shutil

import nbformat
import pytest
import torch

from caia_jupyter.researcher import compose, validation
from caia_jupyter.researcher.runs import Run, Status, ended_message, finished_message, local_failure_record, site_states
from caia_jupyter.site import runtime, sites
from caia_jupyter.site.context import Context
from caia_jupyter.targets.demo_sites import add_reviewer
from conftest import REPO, approve, reviewer_key
from leaks import what_the_researcher_sees

CASE = REPO / "tests" / "cases" / "16-one-site-fails-others-continue"
SITES = ("site-1", "site-2", "site-3")
LEAK = "only 6 rows"  # site-3's assert message: what its rows tell, which must stay at site-3
LINE = "site-3 failed in load_data: the federated code raised an exception (details kept at the site)"


# -- each site's state, and the run's message, from what the run directory holds -----------------

ADMITTED = {site: {"state": "approved"} for site in SITES}


@pytest.mark.parametrize("status, outcome, failed, expected", [
    ({}, {}, set(), dict.fromkeys(SITES, "approved")),
    ({"phase": "training", "sites": list(SITES), "left": {}}, {}, set(), dict.fromkeys(SITES, "running")),
    ({"phase": "training", "sites": ["site-1", "site-2"], "left": {"site-3": 0}}, {}, set(),
     {"site-1": "running", "site-2": "running", "site-3": "failed"}),
    ({"phase": "training", "sites": list(SITES), "left": {}}, {}, {"site-3"},  # its report arrived before the round ended
     {"site-1": "running", "site-2": "running", "site-3": "failed"}),
    ({"phase": "finished", "sites": ["site-1", "site-2"], "left": {"site-3": 0}},
     {"status": "finished", "completed_sites": ["site-1", "site-2"]}, {"site-3"},
     {"site-1": "done", "site-2": "done", "site-3": "failed"}),
    ({"phase": "failed", "sites": ["site-1"], "left": {"site-2": 1, "site-3": 1}},
     {"status": "failed", "completed_sites": []}, {"site-2"},
     {"site-1": "stopped", "site-2": "failed", "site-3": "failed"}),
    ({"phase": "aborted", "sites": list(SITES), "left": {}}, {"status": "aborted"}, set(), dict.fromkeys(SITES, "stopped")),
    ({}, {"status": "failed", "message": "the launcher is gone"}, set(), dict.fromkeys(SITES, "stopped")),
], ids=["admitted", "running", "one left", "one reported", "finished without one", "ended below min_clients",
        "aborted", "launcher lost"])
def test_a_sites_state_is_what_that_site_did(status, outcome, failed, expected):
    assert site_states(SITES, ADMITTED, Status.parse(status, SITES), outcome, failed) == expected


def test_a_refused_run_shows_the_refusing_site_refused_and_the_others_not_started():
    admissions = {"site-1": {"state": "approved"}, "site-2": {"state": "refused", "reason": "no approval"}}
    outcome = {"status": "refused", "completed_sites": [], "failed_sites": {}}
    assert site_states(["site-1", "site-2", "site-3"], admissions, Status(), outcome, set()) == {
        "site-1": "not started", "site-2": "refused", "site-3": "not deployed"}
    assert site_states(["site-1", "site-2"], {}, Status(), {}, set()) == {"site-1": "waiting", "site-2": "waiting"}


def test_a_finished_run_says_whom_it_continued_without_and_why():
    status = {"phase": "finished", "rounds_done": 2, "sites": ["site-1", "site-2"], "left": {"site-3": 0}}
    assert finished_message(Status.parse(status, SITES), list(SITES), 2, {"site-3": LINE}) == (
        f"2 rounds with site-1, site-2; continued without site-3 (min_clients 2); site-3 left at round 0: {LINE}")
    status["left"] = {"site-3": 1}  # no report came (a timeout, or the report was lost)
    assert finished_message(Status.parse(status, SITES), list(SITES), 2, {}).endswith(
        "; site-3 left at round 1: it returned no result")
    status = {"phase": "finished", "rounds_done": 2, "sites": list(SITES), "left": {}}
    assert finished_message(Status.parse(status, SITES), list(SITES), 2, {}) == "2 rounds with site-1, site-2, site-3"


def test_a_run_that_ended_names_each_site_that_left_and_each_other_report():
    status = {"phase": "failed", "message": "round 0: 2 of 3 sites returned results (site-1, site-2); min_clients is 3",
              "left": {"site-3": 0}}
    assert ended_message(Status.parse(status, SITES), {"site-3": LINE}) == f"{status['message']}; site-3 left at round 0: {LINE}"
    aborted = {"phase": "aborted", "message": "the run was aborted", "left": {}}
    assert ended_message(Status.parse(aborted, SITES), {"site-3": LINE}) == f"the run was aborted; {LINE}"
    assert ended_message(Status(), {"site-3": LINE}) == LINE
    assert ended_message(Status(), {}) == ""


# A status.json received from a server, or altered on disk: every field of the wrong shape.
FORGED_STATUS = {"phase": ["finished"], "rounds_done": "2", "rounds": -1, "sites": [1, ["site-1"], "site-9", "site-2", "site-2"],
                 "left": {"site-2\nINJECT": 0, "site-9": 1, "site-3": "round 1\nEVIL", "site-1": True, "site-3 ": 2},
                 "excluded": [{"site": ["site-1"], "round": 1, "reason": "no_examples"},
                              {"site": {"a": 1}, "round": 1, "reason": "no_examples"},
                              {"site": "site-1", "round": 1, "reason": ["x"]}, {"site": "site-1", "round": 1, "reason": {}},
                              {"site": "site-1", "round": -1, "reason": "no_examples"},
                              {"site": "site-1", "round": 1.0, "reason": "no_examples"}, "site-1",
                              {"site": "site-3", "round": 1, "reason": "no_examples"}],
                 "message": "the server\nINJECT: ended"}


def test_a_forged_status_keeps_only_the_runs_own_sites_int_rounds_and_known_reasons():
    for listed in (SITES, dict.fromkeys(SITES, "/x")):  # run.json lists its sites, or maps them to folders
        status = Status.parse(FORGED_STATUS, listed)
        assert status == Status(phase="", rounds_done=0, rounds=None, sites=("site-2",), left={},
                                excluded=(("site-3", 1, "no_examples"),), message="the server INJECT: ended")
    for raw in (None, [], "x", {"sites": "site-1", "left": ["site-1"], "excluded": "abc"}):
        assert Status.parse(raw, SITES) == Status()


def test_the_launchers_messages_read_any_status_without_failing():
    for raw in ({"phase": "finished", "sites": [1, 2], "rounds_done": 2}, {"phase": "finished", "sites": ["site-1"]},
                {"phase": "finished", "rounds_done": 2, "sites": "site-1", "left": {"site-2\nINJECT": "x"}}, FORGED_STATUS):
        status = Status.parse(raw, SITES)
        for message in (finished_message(status, list(SITES), 1, {}), ended_message(status, {})):
            assert "\n" not in message and "INJECT" not in message.replace("the server INJECT", "")
    assert finished_message(Status.parse({"sites": ["site-1"]}, SITES), list(SITES), 1, {}) == (
        "0 rounds with site-1; without site-2, site-3, which refused the bundle (min_clients 1)")


def test_a_run_with_a_forged_status_shows_its_sites_and_notes(tmp_path, caia):
    (tmp_path / "run.json").write_text(json.dumps({"sites": {s: "/x" for s in SITES}, "rounds": 2, "min_clients": 1}))
    (tmp_path / "sites.json").write_text(json.dumps(ADMITTED))
    (tmp_path / "status.json").write_text(json.dumps(FORGED_STATUS))
    (tmp_path / "outcome.json").write_text(json.dumps({"status": "finished", "message": "2 rounds", "completed_sites": ["site-2"]}))
    run = Run(tmp_path)
    assert run.sites == {"site-1": "stopped", "site-2": "done", "site-3": "stopped"}
    assert run.notes == ["site-3's update of round 1 was left out of the average: it trained on no examples "
                         "(num_samples 0: no rows, or none left after load_data)"]
    code, out, err = caia("status", tmp_path, "--json")
    assert (code, err) == (0, "") and json.loads(out)["notes"] == run.notes
    code, out, err = caia("status", tmp_path)
    assert code == 0 and f"  note: {run.notes[0]}" in out.splitlines()


def test_a_run_shows_a_failure_report_while_it_runs(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"sites": list(SITES), "rounds": 2, "min_clients": 2, "target": "poc"}))
    (tmp_path / "sites.json").write_text(json.dumps(ADMITTED))
    (tmp_path / "status.json").write_text(json.dumps({"phase": "training", "rounds_done": 0, "rounds": 2,
                                                      "sites": list(SITES), "left": {}}))
    (tmp_path / "site_failures.json").write_text(json.dumps({"site-3": {"entry": "load_data", "round": None,
                                                                        "category": "raised"}}))
    run = Run(tmp_path)
    assert run.failures == {"site-3": LINE}
    assert run.sites == {"site-1": "running", "site-2": "running", "site-3": "failed"}


# -- case 16 on NVFLARE's simulator -------------------------------------------------------------------


def build_case(folder, min_clients: int):
    """Case 16's notebook (with its min_clients set), bundled and validated."""
    shutil.copytree(CASE, folder)
    path = folder / "p3b_site_failure_mc2.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("min_clients=2", f"min_clients={min_clients}")
    nbformat.write(nb, path)
    built = compose.build(path)
    assert validation.validate(built).passed
    return built


@pytest.fixture(scope="module")
def case_sites(tmp_path_factory):
    """The three sites of case 16, each holding its own export as dataset `nodules`: site -> (Site, catalog entry)."""
    root = tmp_path_factory.mktemp("case16")
    made = {}
    for name in SITES:
        site = sites.init(root / "sites" / name, name)
        entry = sites.add_dataset(site, "nodules", CASE / "site_data" / f"{name}.csv")
        add_reviewer(site, reviewer_key(site))
        made[name] = (site, entry)
    return made


def local_fedavg(built, made, names, rounds: int) -> dict:
    """The FedAvg of `names` only, computed here with the bundle's own entry points (each site's
    update weighted by its num_samples), as the global model of a run with just those sites."""
    entry = runtime.load_entry_points(built.path)
    model = runtime.build_model(entry)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for round in range(rounds):
        updates = []
        for name in names:
            site, catalog = made[name]
            released = {"nodules": {"path": str(site.path / catalog["path"]), "columns": catalog["columns"]}}
            ctx = Context(name, {"lr": 0.1}, released, rounds=rounds, round=round)
            model.load_state_dict(state)
            result = runtime.run_round(entry, model, entry.load_data(ctx), ctx)
            updates.append((result.num_samples, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        total = sum(n for n, _ in updates)
        state = {k: sum(n * update[k].double() for n, update in updates) / total for k in state}
    return state


def run_case(case_sites, tmp_path, caia, min_clients):
    """Case 16 bundled with `min_clients`, approved at its three sites and submitted with the CLI:
    (bundle, run, exit code, stdout, stderr)."""
    built = build_case(tmp_path / "case", min_clients=min_clients)
    for site, _ in case_sites.values():
        approve(site, built.id, {"nodules": "nodules"})
    code, submitted, err = caia("submit", built.path, "--sites", *[s.path for s, _ in case_sites.values()],
                                "--runs", tmp_path / "runs")
    return built, Run(next((tmp_path / "runs").iterdir())), code, submitted, err


@pytest.mark.slow
def test_case_16_one_site_fails_and_the_run_finishes_with_the_other_two(case_sites, tmp_path, caia):
    built, run, code, submitted, err = run_case(case_sites, tmp_path, caia, min_clients=2)
    assert code == 0 and run.status == "finished", (err, run.message)
    line = f"{LINE}; full record on this machine: {local_failure_record(run.path, 'site-3')}"
    assert run.sites == {"site-1": "done", "site-2": "done", "site-3": "failed"}
    assert run.failures == {"site-3": line}
    assert run.message == (f"2 rounds with site-1, site-2; continued without site-3 (min_clients 2); "
                           f"site-3 left at round 0: {line}")
    assert run.message in submitted and "site-1: done" in submitted and f"site-3: failed: {line}" in submitted
    assert set(run.metrics()["site"]) == {"site-1", "site-2"}
    expected = local_fedavg(built, case_sites, ["site-1", "site-2"], rounds=2)
    got = torch.load(run.global_model, weights_only=True)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-5, atol=1e-6)
    code, status, _ = caia("status", run.path, "--json")
    assert json.loads(status)["sites"] == run.sites
    assert LEAK not in what_the_researcher_sees(run, submitted, status)
    assert LEAK in json.loads(local_failure_record(run.path, "site-3").read_text())["message"]  # kept at the site


@pytest.mark.slow
def test_case_16_with_min_clients_3_ends_failed_naming_the_site_that_left(case_sites, tmp_path, caia):
    _, run, code, submitted, err = run_case(case_sites, tmp_path, caia, min_clients=3)
    assert code == 1 and run.status == "failed", err
    line = f"{LINE}; full record on this machine: {local_failure_record(run.path, 'site-3')}"
    assert run.message == ("round 0: 2 of 3 sites returned results (site-1, site-2); min_clients is 3; "
                           f"site-3 left at round 0: {line}")
    assert run.sites == {"site-1": "stopped", "site-2": "stopped", "site-3": "failed"}
    assert run.metrics()[lambda f: f["round"] > 0].empty  # no round after the one site-3 left in
    code, status, _ = caia("status", run.path, "--json")
    assert LEAK not in what_the_researcher_sees(run, submitted, status)


@pytest.mark.slow
def test_a_site_that_fails_in_a_later_round_is_not_asked_again(tmp_path):
    from conftest import build_validated, make_site, set_source
    from caia_jupyter.targets.submit import submit

    def fail_at_site_2_round_1(nb):
        set_source(nb, "rounds=2 min_clients=1", "rounds=3 min_clients=2")
        set_source(nb, "    x, y = data\n    optimizer",
                   "    x, y = data\n    if ctx.site == 'site-2' and ctx.round == 1:\n        raise ValueError(ctx.site)\n    optimizer")

    built = build_validated(tmp_path / "nb", edit=fail_at_site_2_round_1)
    made = [make_site(tmp_path / "sites", name) for name in SITES]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "failed", "site-3": "done"}
    assert json.loads((run.path / "status.json").read_text())["left"] == {"site-2": 1}
    assert run.failures["site-2"].startswith("site-2 failed in train at round 1: the federated code raised an exception")
    assert run.message.startswith("3 rounds with site-1, site-3; continued without site-2 (min_clients 2); "
                                  "site-2 left at round 1: site-2 failed in train at round 1")
    frame = run.metrics()
    assert set(frame[frame["site"] == "site-2"]["round"]) == {0}  # round 0 only: nothing asked of it after round 1
    assert set(frame[frame["round"] == 3]["site"]) == {"site-1", "site-3"}  # the final evaluation


# -- case 16 on a real NVFLARE POC (server, three site processes, admin kit on loopback) --------------


@pytest.fixture(scope="module")
def case_poc(tmp_path_factory):
    """A POC whose three sites hold case 16's exports as dataset `nodules`: (Poc, site -> (Site, catalog entry))."""
    from caia_jupyter.targets import poc as pocs

    workspace = tmp_path_factory.mktemp("poc") / "ws"
    started = pocs.up(workspace, sites=3, say=lambda *a: None)
    try:
        made = {}
        for name in SITES:
            site = sites.open_site(started.site_dir(name))
            made[name] = (site, sites.add_dataset(site, "nodules", CASE / "site_data" / f"{name}.csv"))
        yield started, made
    finally:
        pocs.down(workspace, say=lambda *a: None)
        assert started.processes() == [], "caia poc down left NVFLARE processes behind"


@pytest.mark.slow
def test_case_16_on_a_poc_finishes_with_the_other_two_and_keeps_site_3s_message_there(case_poc, tmp_path, caia):
    from caia_jupyter.reviewer import signing

    poc, made = case_poc
    built = build_case(tmp_path / "case", min_clients=2)
    for name, (site, _) in made.items():
        signing.approve(site, built.id, {"nodules": "nodules"}, poc.reviewer_key(name))
    code, submitted, err = caia("submit", built.path, "--target", "poc", "--poc-workspace", poc.workspace,
                                "--runs", tmp_path / "runs")
    run = Run(next((tmp_path / "runs").iterdir()))
    assert code == 0 and run.status == "finished", (err, run.message)
    assert run.sites == {"site-1": "done", "site-2": "done", "site-3": "failed"}
    assert run.failures == {"site-3": LINE}  # no path: the site's record stays at the site
    assert run.message == f"2 rounds with site-1, site-2; continued without site-3 (min_clients 2); site-3 left at round 0: {LINE}"
    assert set(run.metrics()["site"]) == {"site-1", "site-2"}
    expected = local_fedavg(built, made, ["site-1", "site-2"], rounds=2)
    got = torch.load(run.global_model, weights_only=True)
    for name in expected:
        torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-5, atol=1e-6)
    code, status, _ = caia("status", run.path, "--json")
    assert LEAK not in what_the_researcher_sees(run, submitted, status)
    assert not [p for p in run.path.rglob("*") if p.is_file() and LEAK.encode() in p.read_bytes()]
    kept = poc.kits / "site-3" / run.outcome["job_id"] / "app_site-3" / "caia_failure.json"
    assert LEAK in json.loads(kept.read_text())["message"]


@pytest.mark.slow
def test_case_16_on_a_poc_with_min_clients_3_fails_naming_site_3_not_an_abort(case_poc, tmp_path, caia):
    from caia_jupyter import overview
    from caia_jupyter.reviewer import signing

    poc, made = case_poc
    built = build_case(tmp_path / "case", min_clients=3)
    for name, (site, _) in made.items():
        signing.approve(site, built.id, {"nodules": "nodules"}, poc.reviewer_key(name))
    code, submitted, err = caia("submit", built.path, "--target", "poc", "--poc-workspace", poc.workspace,
                                "--runs", tmp_path / "runs")
    run = Run(next((tmp_path / "runs").iterdir()))
    assert code == 1 and run.status == "failed", (err, run.message)
    assert run.message.startswith("round 0: 2 of 3 sites returned results (site-1, site-2); min_clients is 3; "
                                  f"site-3 left at round 0: {LINE}")
    state = overview.run(run)
    assert state["sites"] == {"site-1": "stopped", "site-2": "stopped", "site-3": "failed"}
    assert state["tones"] == {"site-1": "neutral", "site-2": "neutral", "site-3": "bad"}
    assert state["headline"] == "site-3 failed in load_data; stopped after 0 of 2 rounds"
