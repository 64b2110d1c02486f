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


def test_a_real_site_admitting_data_that_breaks_the_standard_tells_the_researcher_which_rules(poc, tmp_path, caia):
    from caia_jupyter.researcher import compose, validation
    from test_standard import BROKEN, SAMPLE, assert_no_value, notebook

    built = compose.build(notebook(tmp_path / "nb"))
    assert validation.validate(built).passed
    for name, data in (("site-2", BROKEN), ("site-3", SAMPLE)):  # site-2: 7 ages out of range, 2 unknown stages
        path = poc.site_dir(name) / "tiny_std.csv"
        path.write_text(data)
        sites.add_dataset(sites.open_site(poc.site_dir(name)), "tiny_std", path)
    approve(poc, built, ["site-2", "site-3"], {"tiny": "tiny_std"})
    run = submit(built.path, ["site-2", "site-3"], target="poc", poc_workspace=poc.workspace, runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert [note for note in run.notes if "standard" in note] == [
        "site-2 admitted the bundle with dataset tiny breaking its standard: age minimum, age maximum, stage enum"]
    code, status, _ = caia("status", run.path, "--json")
    assert code == 0 and json.loads(status)["notes"] == run.notes
    assert_no_value(json.dumps(run.notes) + (run.path / "site_standards.json").read_text())


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


STAGES = ["I", "II", "III", "IV"]
EXPLORE = ["dataset=cohort:sample.csv", "columns=age,size", "categories=stage:I|II|III|IV"]


@pytest.fixture(scope="module")
def cohort(poc):
    """Dataset `cohort` at each POC site (site name -> its rows): age, size (some missing), stage; site-1
    has exactly 3 patients of stage IV, site-2 none and exactly 15 of stage III, site-3 12 of stage IV."""
    import numpy as np
    import pandas as pd

    frames = {}
    for i, (name, rows) in enumerate(zip(SITES, (40, 55, 30))):
        rng = np.random.default_rng(i)
        stage = np.array([STAGES[k % 3] for k in range(rows)], dtype=object)
        stage[:{"site-1": 3, "site-2": 0, "site-3": 12}[name]] = "IV"
        if name == "site-2":
            stage[stage == "III"] = "II"
            stage[:15] = "III"
        frame = pd.DataFrame({"age": rng.normal(55, 12, rows).round(1), "size": rng.gamma(2, 9, rows), "stage": stage})
        frame.loc[frame.index[: 2 * i], "size"] = np.nan
        frame.to_csv(poc.site_dir(name) / "cohort.csv", index=False)
        sites.add_dataset(sites.open_site(poc.site_dir(name)), "cohort", poc.site_dir(name) / "cohort.csv")
        frames[name] = frame
    return frames


def explore_notebook(folder, request):
    """A notebook in `folder` whose `%federated explore` line is `request`, with a synthetic sample beside it."""
    import nbformat

    folder.mkdir(parents=True)
    (folder / "sample.csv").write_text("age,size,stage\n" + "".join(f"{40 + k}.5,{k * 1.5},{STAGES[k % 4]}\n" for k in range(12)))
    cell = nbformat.v4.new_code_cell("%federated explore " + " ".join(request))
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), folder / "explore.ipynb")
    return folder / "explore.ipynb"


def approve_statistics(poc, bundle, names):
    for name in names:
        signing.approve(sites.open_site(poc.site_dir(name)), bundle.id, {"cohort": "cohort"}, poc.reviewer_key(name),
                        bundle=bundle)


def test_statistics_run_on_the_poc_pooled_as_pandas_with_each_sites_thresholds(poc, cohort, tmp_path):
    import pandas as pd

    from caia_jupyter.researcher.explore import PARTIAL, SUPPRESSED, statistics_bundle
    from caia_jupyter.site.statistics import THRESHOLDS_FILE, set_thresholds
    from caia_jupyter.targets.explore import explore

    notebook = explore_notebook(tmp_path / "nb", [*EXPLORE, "min_clients=3"])
    approve_statistics(poc, statistics_bundle(notebook), SITES)
    set_thresholds(poc.site_dir("site-2"), min_count=20)  # site-2's own rule: its 15 of stage III stay there
    try:
        result, run = explore(notebook, None, tmp_path / "runs", target="poc", poc_workspace=poc.workspace, timeout=300)
    finally:
        (poc.site_dir("site-2") / THRESHOLDS_FILE).unlink()
    assert result is not None, run.message
    assert json.loads((run.path / "run.json").read_text())["target"] == "poc"
    assert run.sites == {name: "done" for name in SITES} and result.sites == list(SITES)
    pooled = pd.concat(cohort.values())
    for statistic, expected in (("count", pooled["age"].count()), ("mean", pooled["age"].mean()),
                                ("stddev", pooled["age"].std())):
        assert abs(result.table(statistic).loc[("cohort", "age"), "pooled"] - expected) < 1e-9, statistic
    # size: 2 and 4 values missing at site-2 and site-3, fewer than 10, so N - count would reveal them: withheld there
    assert result.table("count").loc[("cohort", "size"), "pooled"] == PARTIAL
    counts = result.table("count")
    assert counts.loc[("cohort", "stage=IV"), "site-1"] == SUPPRESSED  # 3 < the default minimum of 10
    assert counts.loc[("cohort", "stage=III"), "site-2"] == SUPPRESSED  # 15 < site-2's own 20
    assert counts.loc[("cohort", "stage=IV"), "pooled"] == PARTIAL
    for name, frame in cohort.items():  # what a site sent is true; what it held back cannot be worked out
        sent = {stage: counts.loc[("cohort", f"stage={stage}"), name] for stage in STAGES}
        released = {stage: n for stage, n in sent.items() if n != SUPPRESSED}
        assert all(n == (frame["stage"] == stage).sum() for stage, n in released.items()), (name, released)
        if len(released) < len(sent):
            assert len(frame) - sum(released.values()) >= (20 if name == "site-2" else 10), (name, released)


def test_a_statistics_bundle_not_approved_at_a_poc_site_is_refused_there(poc, cohort, tmp_path, caia):
    from caia_jupyter.researcher.explore import statistics_bundle

    bundle = statistics_bundle(explore_notebook(tmp_path / "nb", [*EXPLORE, "min_clients=2"]))
    approve_statistics(poc, bundle, ["site-1", "site-2"])
    code, out, err = caia("explore", bundle.path, "--target", "poc", "--poc-workspace", poc.workspace,
                          "--runs", tmp_path / "runs", "--json")
    assert code == 0, err
    shown = json.loads(out)
    run = Run(shown["run"])
    assert run.refusals == {"site-3": f"site-3 refused bundle {bundle.id}: no reviewer of this site approved this "
                                      "bundle id (its reviewers approve it with `caia approve`)"}
    assert shown["sites"] == ["site-1", "site-2"]
    counts = {row["feature"]: row for row in shown["tables"]["count"]}
    assert counts["age"]["pooled"] == len(cohort["site-1"]) + len(cohort["site-2"])


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
