"""A real NVFLARE POC on loopback (server, three site processes, admin kit; conftest's `poc`), started
once for this module: approved runs with live metrics, refusals, tampering, an unreleased dataset, and
a site killed mid-run. `caia poc down` must leave no process behind."""

import json
import re
import signal
import time

import pytest
import torch

from caia_jupyter.researcher.runs import FINAL, Run
from caia_jupyter.reviewer import signing
from caia_jupyter.site import audit, sites
from caia_jupyter.targets import poc as pocs
from caia_jupyter.targets import remote
from caia_jupyter.targets.submit import submit
from conftest import build_validated, set_source
from leaks import FAILED_IN, MARKER, leak_a_row_value, what_the_researcher_sees
import corpus

pytestmark = pytest.mark.slow
SITES = ("site-1", "site-2", "site-3")


def approve(poc, built, names, releases=None):
    for name in names:
        signing.approve(sites.open_site(poc.site_dir(name)), built.id, releases or {"tiny": "tiny"}, poc.reviewer_key(name))


def two_of_three(nb):
    set_source(nb, "min_clients=1", "min_clients=2")


def test_an_approved_bundle_runs_across_three_real_sites_with_live_metrics(poc, tmp_path):
    built = build_validated(tmp_path / "nb", edit=lambda nb: set_source(nb, "rounds=2", "rounds=4"))
    approve(poc, built, SITES)
    run = submit(built.path, target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    live = []
    while run.status not in FINAL:
        live.append((run.status, len(run.metrics())))
        time.sleep(0.5)
    assert run.status == "finished", run.message
    assert any(status == "running" and count > 0 for status, count in live), "no metric arrived while the job ran"
    assert run.sites == {name: "done" for name in SITES}
    frame = run.metrics()
    keys = list(zip(frame["site"], frame["round"], frame["name"]))
    assert len(keys) == len(set(keys)) and set(frame["site"]) == set(SITES)
    assert sorted(frame[(frame.site == "site-1") & (frame.name == "accuracy")]["round"]) == [0, 1, 2, 3, 4]
    state = torch.load(run.global_model, weights_only=True)
    assert state["weight"].shape == (2, 2) and state["weight"].dtype == torch.float32
    assert json.loads((run.path / "model_dtypes.json").read_text()) == {"bias": "float32", "weight": "float32"}


def test_a_site_without_approval_refuses_with_the_bundle_id_and_approving_later_needs_no_restart(poc, tmp_path):
    built = build_validated(tmp_path / "nb", edit=two_of_three)
    approve(poc, built, ["site-1", "site-3"])
    run = submit(built.path, target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.refusals == {"site-2": f"site-2 refused bundle {built.id}: no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)"}
    assert run.sites == {"site-1": "done", "site-2": "refused", "site-3": "done"}
    assert "without site-2, which refused the bundle (min_clients 2)" in run.message

    approve(poc, built, ["site-2"])  # the site keeps running; its guard reads approvals at each deployment
    again = submit(built.path, target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    assert again.wait(timeout=300) == "finished", again.message
    assert again.sites == {name: "done" for name in SITES}
    records, problems = audit.verify(poc.site_dir("site-2"))  # the real site's guard recorded both answers
    assert problems == []
    mine = [(r["event"], r["outcome"]) for r in records if r["bundle_id"] == built.id]
    assert mine == [("refusal", "refused"), ("approval", "signed"), ("admission", "admitted")]


def test_a_tampered_job_is_refused_by_every_site(poc, tmp_path):
    built = build_validated(tmp_path / "nb")
    approve(poc, built, SITES)
    run_dir = remote.create_run(built, list(SITES), tmp_path / "runs", "poc", poc.admin_kit, pocs.ADMIN)
    job = remote.prepare(run_dir, built)
    for app in job.glob("app_site-*"):
        module = app / "custom" / "federated.py"
        module.write_text(module.read_text() + "\nimport os  # added in transit\n")
    run = remote.start(run_dir)
    assert run.wait(timeout=120) == "refused"
    assert run.refusals == {name: f"{name} refused bundle {built.id}: federated.py differs from the bundle's manifest (tampered?)"
                            for name in SITES}


@pytest.mark.parametrize("entry", list(FAILED_IN))
def test_a_sites_exception_text_and_row_values_never_reach_the_researcher(poc, tmp_path, caia, entry):
    site, line = FAILED_IN[entry]
    built = build_validated(tmp_path / "nb", edit=leak_a_row_value)
    for name in (site, "site-3"):  # a dataset whose rows hold the value the code puts in its message
        data = poc.site_dir(name) / "tiny_phi.csv"
        data.write_text(corpus.SAMPLE_CSV + "97.25,0.3,1\n")
        sites.add_dataset(sites.open_site(poc.site_dir(name)), "tiny_phi", data)
    approve(poc, built, [site, "site-3"], {"tiny": "tiny_phi"})
    code, submitted, err = caia("submit", built.path, "--target", "poc", "--poc-workspace", poc.workspace,
                                "--sites", site, "site-3", "--runs", tmp_path / "runs")
    run = Run(next((tmp_path / "runs").iterdir()))
    assert code == 1 and run.status == "failed", err
    assert run.failures == {site: line}  # no path: the site's record stays at the site
    assert run.failures[site] in run.message and run.failures[site] in submitted
    code, status, _ = caia("status", run.path, "--json")
    assert MARKER not in what_the_researcher_sees(run, submitted, status)
    assert not [p for p in run.path.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
    assert MARKER in (poc.kits / site / run.outcome["job_id"] / f"app_{site}" / "caia_failure.json").read_text()


def test_the_production_target_works_with_any_admin_startup_kit(poc, tmp_path):
    built = build_validated(tmp_path / "nb")
    approve(poc, built, SITES)
    run = submit(built.path, ["site-1", "site-2"], target="prod", startup_kit=poc.admin_kit, username=pocs.ADMIN,
                 runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "done"}
    assert json.loads((run.path / "run.json").read_text())["target"] == "prod"


def test_the_readme_configures_a_site_exactly_as_caia_poc_up_does(poc):
    from conftest import REPO

    snippet = re.search(r'```json\s*("app_validator": \{.*?\n\s*\})\s*```', (REPO / "README.md").read_text(), re.S).group(1)
    snippet = snippet.replace("/srv/caia/site-1", str(poc.site_dir("site-1")))
    documented = json.loads("{" + snippet.replace("/srv/nvflare/site-1", str(poc.kits / "site-1")) + "}")
    installed = json.loads((poc.kits / "site-1" / "local" / "resources.json").read_text())
    default = json.loads((poc.kits / "site-1" / "local" / "resources.json.default").read_text())
    assert installed == {**default, **documented}


def test_a_real_sites_privacy_json_is_applied_to_what_leaves_it(poc, tmp_path):
    import numpy as np

    from caia_jupyter.site.privacy_policy import PRIVACY_FILE

    site_dir = poc.site_dir("site-1")
    policy = {"scopes": [{"name": "strict", "task_result_filters": [
        {"path": "nvflare.app_common.filters.ExcludeVars", "args": {"exclude_vars": "^bias$"}}]}], "default_scope": "strict"}
    (site_dir / PRIVACY_FILE).write_text(json.dumps(policy))
    try:
        built = build_validated(tmp_path / "nb")
        approve(poc, built, ["site-1"])  # min_clients 1: site-1 alone trains
        run = submit(built.path, ["site-1"], target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
        assert run.wait(timeout=300) == "finished", run.message
        installed = poc.kits / "site-1" / "local" / PRIVACY_FILE
        assert json.loads(installed.read_text()) == policy  # its one scope, the default: installed as it is
        with np.load(run.path / "job" / "app_server" / "custom" / "initial_model.npz") as initial:
            start = dict(initial)
        final = torch.load(run.global_model, weights_only=True)
        assert np.array_equal(final["bias"].numpy(), start["bias"])  # site-1's bias never left it
        assert not np.array_equal(final["weight"].numpy(), start["weight"])
    finally:
        (site_dir / PRIVACY_FILE).unlink()


def run_and_kill_site_3(poc, tmp_path, min_clients: int):
    """Start an 8-round run (1 s a round at each site) at all three sites, wait for round 2, then
    make site-3 go away entirely: its daemon, site process and job process. Returns the run and
    when site-3 was killed."""
    def slow_rounds(nb):
        set_source(nb, "min_clients=1", f"min_clients={min_clients}")
        set_source(nb, "rounds=2", "rounds=8")
        set_source(nb, "    x, y = data\n    optimizer", "    x, y = data\n    import time\n    time.sleep(1)\n    optimizer")

    built = build_validated(tmp_path / "nb", edit=slow_rounds)
    approve(poc, built, SITES)
    run = submit(built.path, target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    deadline = time.monotonic() + 120
    while run.progress[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.progress[0] >= 2, "the job did not reach round 2"
    victims = [p for p in poc.processes() if re.search(r"/prod_00/site-3(/|\s|$)", " ".join(p.cmdline()))]
    assert victims
    # As if the machine went away: the daemon first (it would restart the others), then the site
    # process (left alive, it would report its dying job process and NVFLARE would fail the job).
    order = ("sub_start.sh", "client_train", "worker_process")
    for proc in sorted(victims, key=lambda p: next((i for i, k in enumerate(order) if k in " ".join(p.cmdline())), 3)):
        proc.send_signal(signal.SIGKILL)
    return run, time.monotonic()


def test_a_site_killed_mid_run_below_min_clients_ends_the_run_clearly(poc, tmp_path):
    run, killed = run_and_kill_site_3(poc, tmp_path, min_clients=3)
    assert run.wait(timeout=400) == "failed", run.message
    assert time.monotonic() - killed < 300
    assert "NVFLARE job" in run.message and run.outcome["job_status"].startswith("FINISHED:")
    assert not run.metrics().empty and run.global_model is not None  # what was produced is kept
    restarted = poc.nvflare("start", "-p", "site-3")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    pocs.wait_until_connected(poc, list(SITES), say=lambda *a: None)


def test_a_site_killed_mid_run_leaves_the_others_to_finish(poc, tmp_path):  # last: site-3 stays dead
    run, killed = run_and_kill_site_3(poc, tmp_path, min_clients=2)
    assert run.wait(timeout=400) == "finished", run.message
    assert time.monotonic() - killed < 300
    assert "site-3" not in run.outcome["completed_sites"] and {"site-1", "site-2"} <= set(run.outcome["completed_sites"])
    frame = run.metrics()
    assert set(frame[frame["round"] >= 7]["site"]) == {"site-1", "site-2"}  # the rounds after the kill
    assert run.global_model is not None
