"""Federated runs on NVFLARE's real simulator: guard, refusals, metrics, failures."""

import json

import pytest
import torch

import corpus
from caia_jupyter.kernel.widgets import RunWidget
from caia_jupyter.researcher.runs import Run, local_failure_record
from caia_jupyter.site import audit
from caia_jupyter.targets import simulator
from caia_jupyter.targets.submit import submit
from conftest import approve, build_validated, make_site, set_source
from leaks import FAILED_IN, MARKER, leak_a_row_value, what_the_researcher_sees

pytestmark = pytest.mark.slow
SITES = ("site-1", "site-2", "site-3")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    built = build_validated(root / "notebook")
    made = {name: make_site(root / "sites", name) for name in SITES}
    return root, built, made


def approve_all(built, site_list):
    for site in site_list:
        approve(site, built.id, {"tiny": "tiny"})


def test_an_approved_bundle_trains_across_three_sites_and_every_record_arrives_once(federation):
    root, built, made = federation
    approve_all(built, made.values())
    run = submit(built.path, [s.path for s in made.values()], runs_root=root / "runs")
    widget, seen = RunWidget(run), []
    widget.observe(lambda change: seen.append((widget.status, len(change["new"]))), names="records")
    widget.follow(interval=0.1)
    assert run.wait(timeout=300) == "finished", run.message
    widget._thread.join(timeout=10)
    assert any(status == "running" and count > 0 for status, count in seen), "no metrics shown while running"
    assert len(widget.records) == len(run.metrics())
    assert run.sites == {name: "done" for name in SITES}
    frame = run.metrics()
    rounds = built.manifest["job"]["rounds"]
    keys = list(zip(frame["site"], frame["round"], frame["name"]))
    assert len(keys) == len(set(keys)), "a record arrived twice"
    for site in SITES:
        mine = frame[frame["site"] == site]
        assert sorted(mine[mine["name"] == "accuracy"]["round"]) == list(range(rounds + 1))  # + the final model
        assert sorted(mine[mine["name"] == "train_loss"]["round"]) == list(range(rounds))
        assert list(mine["round"]) == sorted(mine["round"])  # in order per site
    state = torch.load(run.global_model, weights_only=True)
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (2, 2)
    final = run.final_metrics()
    assert set(final["sites"]) == set(SITES) and 0 <= final["global"]["accuracy"] <= 1


def test_a_site_without_approval_refuses_and_the_run_continues_with_min_clients(tmp_path):
    built = build_validated(tmp_path / "nb")  # min_clients=1 in the corpus notebook
    made = [make_site(tmp_path / "sites", name) for name in SITES]
    approve_all(built, made[:2])
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "done", "site-3": "refused"}
    assert run.refusals["site-3"] == f"site-3 refused bundle {built.id}: no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)"
    assert "without site-3, which refused the bundle (min_clients 1)" in run.message
    assert set(run.metrics()["site"]) == {"site-1", "site-2"}
    for site, last in zip(made, [("admission", "admitted"), ("admission", "admitted"), ("refusal", "refused")]):
        records, problems = audit.verify(site)  # each simulated site's guard recorded its answer
        assert problems == [] and (records[-1]["event"], records[-1]["outcome"]) == last
        assert records[-1]["bundle_id"] == built.id


def test_too_few_admitting_sites_stop_the_run_before_it_starts(tmp_path):
    built = build_validated(tmp_path / "nb", edit=lambda nb: set_source(nb, "min_clients=1", "min_clients=3"))
    made = [make_site(tmp_path / "sites", name) for name in SITES]
    approve_all(built, made[:2])
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "refused"
    assert run.message == ("2 of 3 sites admitted the bundle (refused: site-3); min_clients is 3, so the run did not start")
    assert run.metrics().empty and run.global_model is None


def test_a_released_dataset_missing_a_column_is_refused_naming_the_column(tmp_path):
    built = build_validated(tmp_path / "nb")
    made = [make_site(tmp_path / "sites", name) for name in SITES[:2]]
    short = "x1,label\n" + "".join(f"{i * 0.1:.1f},{i % 2}\n" for i in range(10))
    made.append(make_site(tmp_path / "sites", "site-3", short))
    approve_all(built, made)
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished"
    assert run.refusals["site-3"] == (f"site-3 refused bundle {built.id}: released dataset tiny does not fit the "
                                      "requested schema of 'tiny': missing column 'x2'")
    assert "site-3" not in set(run.metrics()["site"])


def test_a_tampered_job_is_refused_by_every_site(federation):
    root, built, made = federation
    approve_all(built, made.values())
    run_dir = simulator.create_run(built, {n: s.path for n, s in made.items()}, root / "runs")
    job = simulator.prepare(run_dir)
    for app in job.glob("app_site-*"):
        config = app / "config" / "config_fed_client.json"
        config.write_text(config.read_text().replace('"in_process"', '"subprocess"'))
    run = simulator.start(run_dir)
    assert run.wait(timeout=300) == "refused"
    assert run.refusals == {name: f"{name} refused bundle {built.id}: config_fed_client.json differs from the "
                                  "bundle's manifest (tampered?)" for name in SITES}
    assert not list((run_dir / "workspace").glob("site-*/simulate_job/app_site-*/caia_failure.json"))


def test_an_extra_file_in_a_deployed_app_is_refused(federation, tmp_path):
    root, built, made = federation
    approve_all(built, made.values())
    run_dir = simulator.create_run(built, {n: s.path for n, s in made.items()}, tmp_path)
    job = simulator.prepare(run_dir)
    (job / "app_site-2" / "custom" / "helper.py").write_text("import os\n")
    run = simulator.start(run_dir)
    run.wait(timeout=300)
    assert run.refusals == {"site-2": f"site-2 refused bundle {built.id}: the deployed app holds custom/helper.py, "
                                      "which is not part of the bundle"}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """A bundle that puts a row value into an exception message at site-1 and site-2, approved at
    three sites whose data holds that value."""
    root = tmp_path_factory.mktemp("leaky")
    built = build_validated(root / "nb", edit=leak_a_row_value)
    assert MARKER not in "".join(p.read_text() for p in built.path.rglob("*.py"))
    made = {name: make_site(root / "sites", name, corpus.SAMPLE_CSV + "97.25,0.3,1\n") for name in SITES}
    approve_all(built, made.values())
    return built, made


@pytest.mark.parametrize("entry", list(FAILED_IN))
def test_a_sites_exception_text_and_row_values_never_reach_the_researcher(leaky, entry, tmp_path, caia):
    built, made = leaky
    site, line = FAILED_IN[entry]
    code, submitted, err = caia("submit", built.path, "--sites", made[site].path, made["site-3"].path, "--runs", tmp_path)
    run = Run(next(tmp_path.iterdir()))
    assert code == 1 and run.status == "failed", err
    code, status, _ = caia("status", run.path, "--json")
    assert MARKER not in what_the_researcher_sees(run, submitted, status)
    record = local_failure_record(run.path, site)
    assert run.failures == {site: f"{line}; full record on this machine: {record}"}
    assert run.sites[site] == "failed"
    assert run.failures[site] in run.message and run.failures[site] in submitted
    assert json.loads(status)["failures"] == run.failures
    kept = json.loads(record.read_text())  # the simulated site's owner finds the whole story where the line says
    assert MARKER in kept["message"] and MARKER in kept["traceback"]


def test_a_site_trains_no_more_rounds_than_its_reviewers_approved(tmp_path):
    built = build_validated(tmp_path / "nb")  # 2 rounds: what the review shows and the approval binds
    site = make_site(tmp_path / "sites", "site-1")
    approve(site, built.id, {"tiny": "tiny"})
    run_dir = simulator.create_run(built, {"site-1": site.path}, tmp_path / "runs")
    config = simulator.prepare(run_dir) / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(config.read_text())
    server["workflows"][0]["args"]["num_rounds"] = 6  # the server app is the researcher's to change
    config.write_text(json.dumps(server))
    run = simulator.start(run_dir)
    assert run.wait(timeout=300) == "failed"
    assert sorted({r.round for r in run.records() if r.name == "train_loss"}) == [0, 1]
    assert run.failures["site-1"].startswith("site-1 failed in caia's site runtime: the server asked for more rounds or evaluations "
                                             "than this site's reviewers approved; the site stopped")


def test_aborting_from_another_handle_stops_caias_launcher_and_every_process_it_started(federation, tmp_path):
    import psutil

    root, built, made = federation
    approve_all(built, made.values())
    started = submit(built.path, [s.path for s in made.values()], runs_root=tmp_path / "runs")
    launcher = started._process.pid
    assert Run(started.path).abort() == "aborted"  # as the panel does: a handle that did not start it
    started._process.wait(timeout=30)
    assert json.loads((started.path / "outcome.json").read_text())["status"] == "aborted"
    left = [p for p in psutil.process_iter() if _group_of(p) == launcher]
    assert left == [], left


def _group_of(process):
    import os

    try:
        return os.getpgid(process.pid)
    except OSError:
        return None
