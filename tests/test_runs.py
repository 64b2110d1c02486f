"""What a run tells the researcher: its headline, each site's tone, the global metrics per round, the
runs list (`caia runs`, GET /caia/api/runs) and logging a run to MLflow (`caia mlflow`).

The slow tests share two real simulator runs (module-scoped): one where site-2 raises in train at
round 1 and the run continues without it (min_clients 2), and one that too few sites admit."""

import json
import shutil

import pytest

from caia_jupyter import overview
from caia_jupyter.contracts.failures import Report
from caia_jupyter.researcher.metrics import Record
from caia_jupyter.contracts.errors import CaiaError
from caia_jupyter.researcher.runs import Run, Status, global_metrics, headline, tones
from caia_jupyter.targets.submit import submit
from conftest import approve, build_validated, make_site, set_source

SITES = ("site-1", "site-2", "site-3")
SPEC = {"sites": list(SITES), "rounds": 3, "min_clients": 2}
ADMITTED = {site: {"state": "approved"} for site in SITES}
TRAIN_2 = Report(entry="train", round=2, category="raised")
SECRET = "SECRET-ROW-42"  # what site-2's exception says: it must stay at the site


# -- the headline and tones, from what a run directory holds ------------------------------------------


@pytest.mark.parametrize("run_status, admissions, status, reports, expected", [
    ("failed", ADMITTED, {"phase": "failed", "rounds_done": 2, "sites": ["site-1", "site-3"], "left": {"site-2": 2}},
     {"site-2": TRAIN_2}, "site-2 failed in round 2 (train); stopped after 2 of 3 rounds"),
    ("aborted", ADMITTED, {"phase": "aborted", "rounds_done": 1, "sites": list(SITES), "message": "the run was aborted"},
     {"site-2": TRAIN_2}, "site-2 failed in round 2 (train); aborted after 1 of 3 rounds"),
    ("finished", ADMITTED, {"phase": "finished", "rounds_done": 3, "sites": ["site-1", "site-2"], "left": {"site-3": 0}},
     {"site-3": Report(entry="load_data", round=None, category="raised")},
     "finished: 3 rounds with site-1, site-2; continued without site-3, which failed in load_data"),
    ("finished", ADMITTED, {"phase": "finished", "rounds_done": 3, "sites": ["site-1", "site-2"], "left": {"site-3": 1}},
     {}, "finished: 3 rounds with site-1, site-2; continued without site-3, which returned no result in round 1"),
    ("finished", ADMITTED, {"phase": "finished", "rounds_done": 3, "sites": ["site-1", "site-3"], "left": {"site-2": 3}},
     {"site-2": Report(entry="evaluate", round=3, category="raised")},
     "finished: 3 rounds with site-1, site-3; continued without site-2, which failed in the final evaluation (evaluate)"),
    ("finished", {**ADMITTED, "site-3": {"state": "refused"}}, {"phase": "finished", "rounds_done": 3,
                                                                 "sites": ["site-1", "site-2"]}, {},
     "finished: 3 rounds with site-1, site-2; site-3 refused the bundle"),
    ("finished", ADMITTED, {"phase": "finished", "rounds_done": 3, "sites": list(SITES)}, {},
     "finished: 3 rounds with site-1, site-2, site-3"),
    ("refused", {**ADMITTED, "site-3": {"state": "refused"}}, {}, {},
     "refused: 2 of 3 sites admitted the bundle (site-3 refused); min_clients 2"),
    ("running", ADMITTED, {"phase": "training", "rounds_done": 1, "sites": ["site-1", "site-3"], "left": {"site-2": 1}},
     {"site-2": Report(entry="runtime", round=1, category="unknown")},
     "running: round 2 of 3; continued without site-2, which failed"),
    ("starting", {}, {}, {}, "starting"),
    ("failed", {}, {}, {}, "failed before the first round"),
    ("failed", ADMITTED, {"phase": "failed", "rounds_done": 1, "sites": list(SITES)}, {}, "failed after 1 of 3 rounds"),
], ids=["one site failed", "aborted", "continued without", "no result", "final evaluation", "refused one",
        "all", "too few admitted", "running", "starting", "launcher lost", "server failed"])
def test_the_headline_says_which_site_failed_where_never_what_it_raised(run_status, admissions, status, reports, expected):
    assert headline(run_status, SPEC, admissions, Status.parse(status, SITES), reports) == expected


def test_only_a_site_that_failed_or_refused_is_bad():
    states = {"a": "done", "b": "failed", "c": "refused", "d": "stopped", "e": "not started", "f": "running",
              "g": "approved", "h": "waiting"}
    assert tones(states) == {"a": "ok", "b": "bad", "c": "bad", "d": "neutral", "e": "neutral", "f": "neutral",
                             "g": "neutral", "h": "neutral"}


def test_the_global_metric_is_the_num_samples_weighted_mean_per_round():
    records = [Record("site-1", 0, "num_samples", 30.0, 1), Record("site-2", 0, "num_samples", 10.0, 1),
               Record("site-1", 0, "loss", 1.0, 1), Record("site-2", 0, "loss", 3.0, 1),
               Record("site-3", 0, "loss", 9.0, 1),  # no num_samples yet: weighs 1
               Record("site-1", 1, "loss", None, 2), Record("site-2", 1, "loss", 2.0, 2),  # missing: left out
               Record("site-1", 2, "accuracy", 0.5, 3), Record("site-2", 2, "accuracy", 1.0, 3),  # weighed by round 0's sizes
               Record("site-1", 3, "loss", None, 4)]
    assert global_metrics(records) == [(0, "loss", (30 * 1 + 10 * 3 + 9) / 41), (1, "loss", 2.0),
                                       (2, "accuracy", (30 * 0.5 + 10 * 1.0) / 40), (3, "loss", None)]
    zero = [Record("site-1", 0, "num_samples", 0.0, 1), Record("site-1", 0, "loss", 1.0, 1)]
    assert global_metrics(zero) == [(0, "loss", None)]


# -- the runs list: every folder, none breaking it ------------------------------------------------------


def fake_run(folder, status="finished", **spec):
    """A fake run folder as a launcher leaves it: run.json, sites.json, status.json, outcome.json."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"target": "simulator", "bundle_id": "sha256:" + "ab" * 32,
                                                 "sites": {"site-1": "/x"}, "rounds": 1, "min_clients": 1,
                                                 "created": "2026-01-01T00:00:00+00:00", **spec}))
    (folder / "sites.json").write_text(json.dumps({"site-1": {"state": "approved"}}))
    (folder / "status.json").write_text(json.dumps({"phase": status, "rounds_done": 1, "sites": ["site-1"]}))
    (folder / "outcome.json").write_text(json.dumps({"status": status, "completed_sites": ["site-1"]}))
    return folder


def test_the_runs_list_is_newest_first_and_shows_an_unreadable_run_without_failing(tmp_path, caia):
    runs = tmp_path / "runs"
    fake_run(runs / "20260101T000000-old")
    fake_run(runs / "20260102T000000-new", created="2026-01-02T00:00:00+00:00")
    (runs / "notes").mkdir()  # a folder that is no run at all
    (runs / "README.txt").write_text("x")
    (runs / "20260103T000000-broken").mkdir()
    (runs / "20260103T000000-broken" / "run.json").write_text('{"sites": "site-1", "rounds": "two"}')
    listed = overview.runs(runs)
    assert [(e["run"].split("/")[-1], e["status"]) for e in listed] == [
        ("20260102T000000-new", "finished"), ("20260101T000000-old", "finished"),
        ("20260103T000000-broken", "unreadable")]
    assert listed[0]["short_id"] == "ab" * 6 and listed[0]["headline"] == "finished: 1 round with site-1"
    assert listed[2]["headline"] == overview.UNREADABLE and "/" not in listed[2]["headline"]
    code, out, err = caia("runs", runs)
    assert (code, err) == (0, "") and out.splitlines()[0].split()[:4] == ["STARTED", "BUNDLE", "TARGET", "STATUS"]
    assert "finished: 1 round with site-1" in out.splitlines()[1] and "unreadable" in out.splitlines()[3]
    code, out, _ = caia("runs", runs, "--json")
    assert code == 0 and [e["status"] for e in json.loads(out)["runs"]] == ["finished", "finished", "unreadable"]
    assert caia("runs", tmp_path / "none")[:2] == (0, "no runs\n")
    code, _, err = caia("runs", runs / "README.txt")
    assert code == 2 and "is not a folder" in err


def test_a_notebooks_runs_list_leaves_out_the_runs_of_other_notebooks_beside_it(tmp_path):
    runs, bundles = tmp_path / "runs", tmp_path / "bundles"
    fake_run(runs / "20260101T000000-mine", bundle=str(bundles / "mine"))
    fake_run(runs / "20260102T000000-other", bundle=str(bundles / "other"))
    assert [e["run"].split("/")[-1] for e in overview.runs(runs, bundles / "mine")] == ["20260101T000000-mine"]
    assert len(overview.runs(runs)) == 2  # `caia runs` lists the whole folder


def test_logging_without_mlflow_names_the_install(tmp_path, caia, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    run = fake_run(tmp_path / "runs" / "r1")
    code, out, err = caia("mlflow", run)
    assert code == 2 and err.strip() == ("caia: error: MLflow is not installed; install it with: "
                                         "pip install 'caia-jupyter[mlflow]'")


def run_with_sites(folder, names, values):
    """A fake finished run of sites `names` (rounds=1) whose metrics.jsonl holds `values`: [(site, round, name, value)]."""
    fake_run(folder, sites={n: f"/x/{n}" for n in names})
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"site": s, "round": r, "name": n, "value": v, "time": 1.0}) + "\n"
                                                  for s, r, n, v in values))
    (folder / "outcome.json").write_text(json.dumps({"status": "finished", "completed_sites": list(names)}))
    return folder


def test_a_site_named_global_keeps_its_own_final_metrics_in_the_runs_list(tmp_path):
    run = run_with_sites(tmp_path / "runs" / "r1", ["global", "site-1"], [
        ("global", 1, "accuracy", 0.2), ("site-1", 1, "accuracy", 0.8), ("global", 1, "num_samples", 1), ("site-1", 1, "num_samples", 3)])
    entry = overview.run_entry(run)
    assert entry["final"]["accuracy"] == {"global": 0.2, "site-1": 0.8}
    assert entry["global"]["accuracy"] == pytest.approx(0.65)


def test_mlflow_keys_of_a_site_named_global_do_not_collide_with_the_global_means(tmp_path):
    from caia_jupyter.researcher import tracking

    run = run_with_sites(tmp_path / "runs" / "r1", ["global", "site-1"], [("global", 1, "accuracy", 0.2), ("site-1", 1, "accuracy", 0.8)])
    rows = {(key, step): value for key, value, _, step in tracking.metrics(Run(run))}
    assert rows == {("site/global/accuracy", 1): 0.2, ("site/site-1/accuracy", 1): 0.8, ("global/accuracy", 1): 0.5}


def test_caia_mlflow_of_a_run_whose_job_copy_has_odd_params_is_a_one_line_error(tmp_path, caia):
    run = run_with_sites(tmp_path / "runs" / "r1", ["site-1"], [("site-1", 1, "accuracy", 0.8)])
    (run / "job" / "x" / "custom").mkdir(parents=True)
    (run / "job" / "x" / "custom" / "manifest.json").write_text(json.dumps({"job": {"params": [1, 2]}, "datasets": {}}))
    code, out, err = caia("mlflow", run)
    assert code == 2 and len(err.splitlines()) == 1 and "manifest.json is not a manifest caia wrote" in err, err
    assert not (tmp_path / "mlruns").exists()  # nothing half-logged


def test_caia_mlflow_uploads_no_file_a_run_folder_links_to(tmp_path, caia):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    run = run_with_sites(tmp_path / "runs" / "r1", ["site-1"], [("site-1", 1, "accuracy", 0.8)])
    (run / "global_model.pt").symlink_to(secret)
    code, out, err = caia("mlflow", run)
    assert code == 2 and len(err.splitlines()) == 1 and "global_model.pt is not a regular file of the run folder" in err
    assert not (tmp_path / "mlruns").exists()


def test_caia_mlflow_never_shows_the_password_of_a_tracking_uri(tmp_path, caia, monkeypatch):
    from caia_jupyter.researcher.tracking import redacted

    assert redacted("https://ann:s3cret@mlflow.example/x") == "https://***@mlflow.example/x"
    assert redacted("file:///tmp/mlruns") == "file:///tmp/mlruns"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = run_with_sites(tmp_path / "runs" / "r1", ["site-1"], [("site-1", 1, "accuracy", 0.8)])
    code, out, err = caia("mlflow", run, "--tracking-uri", "http://ann:s3cret@127.0.0.1:9")
    assert code == 2 and "s3cret" not in out + err and "MLflow at http://***@127.0.0.1:9 refused the run" in err


def test_caia_runs_prints_no_control_character_a_run_folder_holds(tmp_path, caia):
    runs = tmp_path / "runs"
    fake_run(runs / "forged", created="2026\x1b]0;owned\x07\x1b[2J", target="simulator\nFAKE  finished")
    fake_run(runs / "named", sites={"site-1\x1b[31m": "/x"})
    fake_run(runs / "local-time", created="2026-01-02T00:00:00")  # no zone: read as UTC, not unreadable
    listed = {e["run"].split("/")[-1]: e for e in overview.runs(runs)}
    assert listed["forged"]["started_at"] is None and listed["forged"]["target"] == ""
    assert listed["named"]["status"] == "unreadable"
    assert listed["local-time"]["status"] == "finished" and listed["local-time"]["started_at"] == "2026-01-02T00:00:00+00:00"
    code, out, err = caia("runs", runs)
    assert code == 0 and not any(ord(c) < 32 and c != "\n" for c in out), repr(out)
    assert len(out.splitlines()) == 4, repr(out)


def test_the_headline_of_a_refused_run_counts_only_sites_that_admitted_the_bundle(tmp_path):
    # a site that never deployed (offline: absent from NVFLARE's deploy detail, so from sites.json)
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"rounds": 3, "min_clients": 3, "sites": ["site-1", "site-2", "site-3"],
                                              "bundle_id": "sha256:" + "a" * 64, "target": "poc"}))
    (run / "sites.json").write_text(json.dumps({"site-1": {"state": "approved"}, "site-2": {"state": "approved"}}))
    (run / "outcome.json").write_text(json.dumps({"status": "refused"}))
    handle = Run(run)
    assert handle.headline == "refused: 2 of 3 sites admitted the bundle (site-3 not deployed); min_clients 3"
    assert handle.sites == {"site-1": "not started", "site-2": "not started", "site-3": "not deployed"}


def test_a_run_json_whose_sites_are_not_names_is_a_one_line_error(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"rounds": 2, "sites": [["site-1"]], "bundle_id": "sha256:" + "a" * 64}))
    (run / "outcome.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(CaiaError, match="run.json is not a caia run description: its sites are not site names"):
        overview.run(run)
    assert overview.run_entry(run)["status"] == "unreadable"


# -- on NVFLARE's simulator --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three sites holding `tiny`; (root, sites)."""
    root = tmp_path_factory.mktemp("runs")
    return root, [make_site(root / "sites", name) for name in SITES]


@pytest.fixture(scope="module")
def continued(federation):
    """A finished run: rounds=3, min_clients=2; site-2 raises (SECRET) in train at round 1, the run continues."""
    root, made = federation

    def fail_at_site_2_round_1(nb):
        set_source(nb, "rounds=2 min_clients=1", "rounds=3 min_clients=2")
        set_source(nb, "    x, y = data\n    optimizer",
                   f"    x, y = data\n    if ctx.site == 'site-2' and ctx.round == 1:\n        raise ValueError('{SECRET}')\n"
                   "    optimizer")

    built = build_validated(root / "nb", edit=fail_at_site_2_round_1)
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=root / "study" / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    return run


@pytest.mark.slow
def test_a_run_that_continued_without_a_site_says_so_and_keeps_the_others_healthy(continued):
    state = overview.run(continued)
    assert state["headline"] == ("finished: 3 rounds with site-1, site-3; continued without site-2, "
                                 "which failed in round 1 (train)")
    assert state["sites"] == {"site-1": "done", "site-2": "failed", "site-3": "done"}
    assert state["tones"] == {"site-1": "ok", "site-2": "bad", "site-3": "ok"}
    assert state["bundle_id"] == continued.spec["bundle_id"] and state["short_id"] == state["bundle_id"][7:19]
    assert state["final_round"] == 3
    rounds = {r for r, name, _ in state["global"] if name == "accuracy"}
    assert rounds == {0, 1, 2, 3}
    frame = continued.metrics()
    final = frame[(frame["round"] == 3) & (frame["name"] == "accuracy")].set_index("site")["value"]
    sizes = frame[frame["name"] == "num_samples"].groupby("site")["value"].last()
    expected = sum(final[s] * sizes[s] for s in final.index) / sum(sizes[s] for s in final.index)
    assert dict(((r, n), v) for r, n, v in state["global"])[(3, "accuracy")] == pytest.approx(expected)
    assert continued.final_metrics()["global"]["accuracy"] == pytest.approx(expected)
    assert SECRET not in json.dumps(state["headline"])


@pytest.mark.slow
def test_when_too_few_sites_admit_an_admitted_site_is_not_bad(federation, tmp_path):
    root, made = federation
    built = build_validated(tmp_path / "nb", edit=lambda nb: set_source(nb, "min_clients=1", "min_clients=3"))
    for site in made[:2]:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "refused"
    state = overview.run(run)
    assert state["tones"] == {"site-1": "neutral", "site-2": "neutral", "site-3": "bad"}
    assert state["sites"] == {"site-1": "not started", "site-2": "not started", "site-3": "refused"}
    assert state["headline"] == "refused: 2 of 3 sites admitted the bundle (site-3 refused); min_clients 3"
    assert state["final_round"] is None and state["global"] == []


@pytest.mark.slow
def test_the_runs_list_shows_a_real_run_with_its_final_and_global_metrics(continued, caia):
    listed = overview.runs(continued.path.parent)
    assert len(listed) == 1
    entry = listed[0]
    assert entry["status"] == "finished" and entry["target"] == "simulator" and entry["duration_s"] > 0
    assert entry["headline"] == overview.run(continued)["headline"]
    assert set(entry["final"]["accuracy"]) == {"site-1", "site-3"}
    assert entry["global"]["accuracy"] == pytest.approx(continued.final_metrics()["global"]["accuracy"])
    code, out, _ = caia("runs", continued.path.parent)
    assert code == 0 and "continued without site-2" in out and SECRET not in out


@pytest.mark.slow
def test_a_finished_run_logged_to_mlflow_reads_back(continued, caia, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the client reading it back
    code, out, err = caia("mlflow", continued.path, "--json")
    assert (code, err) == (0, ""), err
    logged = json.loads(out)
    assert logged["tracking_uri"] == (continued.path.parent.parent / "mlruns").resolve().as_uri()
    client = MlflowClient(logged["tracking_uri"])
    found = client.get_run(logged["run_id"])
    assert found.data.params["param.lr"] == "0.1" and found.data.params["rounds"] == "3"
    assert found.data.params["min_clients"] == "2" and found.data.params["datasets"] == "tiny"
    assert found.data.tags["caia.bundle_id"] == continued.spec["bundle_id"]
    assert found.data.tags["caia.status"] == "finished" and found.data.tags["caia.target"] == "simulator"
    assert found.info.status == "FINISHED" and "caia.partial" not in found.data.tags
    frame = continued.metrics()
    mine = frame[(frame["site"] == "site-1") & (frame["name"] == "accuracy")]
    history = client.get_metric_history(logged["run_id"], "site/site-1/accuracy")
    assert sorted((m.step, m.value) for m in history) == sorted(zip(mine["round"], mine["value"]))
    theirs = frame[(frame["site"] == "site-2") & (frame["name"] == "accuracy")]["round"]
    assert sorted(m.step for m in client.get_metric_history(logged["run_id"], "site/site-2/accuracy")) == sorted(theirs)
    assert max(theirs) < 3  # it left the run: no final evaluation
    steps = {m.step: m.value for m in client.get_metric_history(logged["run_id"], "global/accuracy")}
    assert steps[3] == pytest.approx(continued.final_metrics()["global"]["accuracy"])
    assert [a.path for a in client.list_artifacts(logged["run_id"])] == ["global_model.pt"]
    local = client.download_artifacts(logged["run_id"], "global_model.pt", str(tmp_path))
    assert open(local, "rb").read() == continued.global_model.read_bytes()
    capsys.readouterr()  # MLflow's download progress
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, out, err = caia("mlflow", continued.path, "--tracking-uri", "http://127.0.0.1:9", "--experiment", "x")
    assert code == 2 and err.startswith("caia: error: MLflow at http://127.0.0.1:9 refused the run (")
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_run_not_finished_is_logged_as_what_it_has_and_says_so(continued, caia, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    copy = tmp_path / "runs" / continued.path.name
    shutil.copytree(continued.path, copy, ignore=shutil.ignore_patterns("workspace", "global_model.pt"))
    (copy / "outcome.json").unlink()  # as if its launcher were lost mid-run: the run reads as failed
    code, out, err = caia("mlflow", copy, "--tracking-uri", (tmp_path / "store").as_uri())
    assert code == 0 and "note: the run is failed, not finished" in out
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "store").as_uri())
    found = client.search_runs([client.get_experiment_by_name("caia").experiment_id])[0]
    assert found.data.tags["caia.partial"] == "true" and found.info.status == "FAILED"
    assert client.get_metric_history(found.info.run_id, "site/site-1/accuracy")


@pytest.mark.slow
def test_the_magic_logs_a_run_to_mlflow_as_the_cli_does(continued, shell, tmp_path):
    logged = shell.run_line_magic("federated", f"mlflow {continued.path} --tracking-uri {(tmp_path / 'store').as_uri()} "
                                               "--experiment mine")
    assert logged.experiment == "mine" and logged.status == "finished" and not logged.partial
    assert (tmp_path / "store").is_dir()
