"""Fail fast: a run that could never start, a site name NVFLARE cannot use and a release a site would
not admit are refused at once, in one line, with exit 2 and nothing written; and what the commands
print (plurals, metric digits, round numbers, exit codes) is what the README says."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from caia_jupyter.contracts.errors import CaiaError
from caia_jupyter.researcher import bundle as bundles, compose, validation
from caia_jupyter.researcher.runs import Status, finished_message, refused_message
from caia_jupyter.researcher.wording import metric, plural
from caia_jupyter.reviewer import signing
from caia_jupyter.site import guard, sites
from caia_jupyter.targets.job import build_job
from caia_jupyter.targets.submit import check_sites, submit
from caia_jupyter.terminal import follow
from conftest import approve, make_site, reviewer_key, set_source

CASES = Path(__file__).parent / "cases"
CASE_14 = CASES / "14-one-site-default-min-clients"
REPO = Path(__file__).resolve().parents[1]


def nvflare_processes() -> list[str]:
    """Command lines of this process's descendants that run NVFLARE or a caia launcher."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "nvflare" in line or "caia_jupyter.targets" in line:
            found.append(line)
    return found


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("caia: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def validated_14(tmp_path_factory):
    """Case 14's notebook bundled and validated as its researcher would (papermill, real kernel), once."""
    work = shutil.copytree(CASE_14, tmp_path_factory.mktemp("case14") / "case")
    built = compose.build(work / "single_site.ipynb")
    assert validation.validate(built).passed
    return built


@pytest.fixture
def case_14(validated_14, tmp_path, caia):
    """Case 14's validated bundle, and site-1 with its export, approved by its reviewer."""
    bundle = shutil.copytree(validated_14.path, tmp_path / "bundle")
    site, key = tmp_path / "sites" / "site-1", tmp_path / "reviewer.key"
    assert caia("site", "init", site, "--name", "site-1")[0] == 0
    assert caia("site", "add-dataset", site, "tumours", CASE_14 / "site_data" / "site-1.csv")[0] == 0
    assert caia("reviewer", "init", key)[0] == 0
    assert caia("site", "trust", site, f"{key}.pub")[0] == 0
    code, _, err = caia("approve", bundle, "--site", site, "--key", key, "--dataset", "tumours")
    assert code == 0, err
    return bundle, site


def assert_refused_at_once(code, err, runs):
    one_line_error(err)
    assert code == 2
    assert "min_clients is 2 but 1 site given (site-1)" in err
    assert "give at least 2 sites with --sites, or set min_clients=1" in err
    assert not runs.exists()  # no run folder
    assert nvflare_processes() == []  # nothing started


# -- case 14: one site given, min_clients left at 2 ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("detach", [[], ["--detach"]])
def test_case_14_submit_refuses_one_site_when_min_clients_is_2_before_anything_starts(case_14, caia, tmp_path, detach):
    bundle, site = case_14
    assert bundles.load(bundle).manifest["job"]["min_clients"] == 2  # left at its default
    code, out, err = caia("submit", bundle, "--sites", site, "--runs", tmp_path / "runs", *detach)
    assert out == ""
    assert_refused_at_once(code, err, tmp_path / "runs")


@pytest.mark.slow
def test_the_panel_and_the_kernel_submit_through_the_same_check(case_14, tmp_path):
    bundle, site = case_14
    with pytest.raises(CaiaError, match=r"min_clients is 2 but 1 site given \(site-1\)") as error:
        submit(bundle, [site], runs_root=tmp_path / "runs")  # what %federated submit and the panel's POST call
    assert error.value.exit_code == 2 and not (tmp_path / "runs").exists()
    with pytest.raises(CaiaError, match=r"min_clients is 2 but 1 site given \(hospital-a\)"):
        submit(bundle, ["hospital-a", "hospital-a"], target="prod", startup_kit=tmp_path / "kit", username="me",
               runs_root=tmp_path / "runs")  # a name given twice is one site
    assert not (tmp_path / "runs").exists() and nvflare_processes() == []


def test_check_sites_counts_distinct_sites_against_min_clients(tmp_path):
    built = compose.build(shutil.copytree(CASE_14, tmp_path / "case") / "single_site.ipynb")  # min_clients=2
    with pytest.raises(CaiaError, match=r"^min_clients is 2 but 1 site given \(site-1\); give at least 2 sites"):
        check_sites(built, ["site-1", "site-1"])
    check_sites(built, ["site-1", "site-2"])


# -- site names NVFLARE cannot use -----------------------------------------------------------------

BAD_NAMES = ["site.1", "site 1", "site/1", "site-1\n", "hôpital", "", "../x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_site_init_refuses_a_name_nvflare_cannot_use(caia, tmp_path, name):
    code, out, err = caia("site", "init", tmp_path / "s", "--name", name)
    one_line_error(err)  # a newline in the name is shown as \n
    assert code == 2 and out == "" and repr(name) in err
    assert "cannot be an NVFLARE client name: use only letters, digits, '-' and '_'" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["site-1", "Site_2", "h3"])
def test_site_init_takes_the_names_nvflare_takes(tmp_path, name):
    from nvflare.apis.utils.format_check import name_check

    assert name_check(name, "client")[0] is False  # NVFLARE's own check agrees
    assert sites.init(tmp_path / "s", name).name == name


def test_check_sites_refuses_a_name_nvflare_cannot_use(tmp_path, write_notebook):
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    with pytest.raises(CaiaError, match=r"^site name 'site\.2' cannot be an NVFLARE client name"):
        check_sites(built, ["site-1", "site.2"])


LONGEST = "a" * 251  # NVFLARE writes a folder app_<name>; a folder name holds 255 bytes
RESERVED_OR_LONG = {
    "server": "NVFLARE reserves 'server' (in any case) for its server; choose another name",
    "Server": "NVFLARE reserves 'server' (in any case) for its server; choose another name",
    LONGEST + "a": f"it has {len(LONGEST) + 1} characters, NVFLARE's site folders allow at most {len(LONGEST)}",
}


@pytest.mark.parametrize("name", RESERVED_OR_LONG)
def test_site_init_refuses_the_server_s_name_and_a_name_too_long_for_a_folder(caia, tmp_path, name):
    code, out, err = caia("site", "init", tmp_path / "s", "--name", name)
    assert code == 2 and out == ""
    assert one_line_error(err).startswith(f"caia: error: site name {name!r} cannot be an NVFLARE client name: {RESERVED_OR_LONG[name]}")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", RESERVED_OR_LONG)
def test_check_sites_refuses_the_server_s_name_and_a_name_too_long_for_a_folder(tmp_path, write_notebook, name):
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    with pytest.raises(CaiaError, match=f"^site name {re.escape(repr(name))} cannot be an NVFLARE client name: "
                                        f"{re.escape(RESERVED_OR_LONG[name])}"):
        check_sites(built, ["site-1", name])


def test_the_rules_are_nvflare_s_own_limits(tmp_path, write_notebook):
    """What NVFLARE does with the names the rules refuse, and the longest it takes."""
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    with pytest.raises(ValueError, match="can only be assigned to server"):  # a client named as the server
        build_job(built, ["site-1", "server"], tmp_path / "job-server", name="caia-names")
    with pytest.raises(OSError, match="File name too long"):
        build_job(built, ["site-1", LONGEST + "a"], tmp_path / "job-long", name="caia-names")
    assert (build_job(built, ["site-1", LONGEST], tmp_path / "job", name="caia-names") / f"app_{LONGEST}").is_dir()
    assert sites.init(tmp_path / "s", LONGEST).name == LONGEST


@pytest.mark.slow
def test_submit_refuses_a_site_whose_name_nvflare_cannot_use(tmp_path, caia, validated_good):
    bundle = shutil.copytree(validated_good.path, tmp_path / "bundle")
    site = make_site(tmp_path / "sites", "site-1")
    meta = json.loads((site.path / "site.json").read_text())
    (site.path / "site.json").write_text(json.dumps({**meta, "name": "site.1"}))  # made before the rule, or by hand
    code, _, err = caia("submit", bundle, "--sites", site.path, "--runs", tmp_path / "runs")
    assert code == 2 and "site name 'site.1' cannot be an NVFLARE client name" in one_line_error(err)
    code, _, err = caia("submit", bundle, "--target", "prod", "--startup-kit", tmp_path, "--username", "me",
                        "--sites", "a.b", "--runs", tmp_path / "runs")
    assert code == 2 and "site name 'a.b' cannot be an NVFLARE client name" in one_line_error(err)
    assert not (tmp_path / "runs").exists() and nvflare_processes() == []


@pytest.mark.slow
def test_submit_refuses_a_site_named_as_nvflare_s_server(tmp_path, caia, validated_good):
    bundle = shutil.copytree(validated_good.path, tmp_path / "bundle")
    site = make_site(tmp_path / "sites", "site-1")
    make_site(tmp_path / "sites", "site-2")
    meta = json.loads((site.path / "site.json").read_text())
    (site.path / "site.json").write_text(json.dumps({**meta, "name": "server"}))  # made before the rule, or by hand
    code, _, err = caia("submit", bundle, "--sites", site.path, tmp_path / "sites" / "site-2", "--runs", tmp_path / "runs")
    assert code == 2 and "site name 'server' cannot be an NVFLARE client name: NVFLARE reserves" in one_line_error(err)
    assert not (tmp_path / "runs").exists() and nvflare_processes() == []


# -- approve refuses what the site would not admit, with the guard's own check ----------------------

CSV_MISSING_X2 = "x1,label\n0.1,1\n0.2,0\n"
CSV_X1_TEXT = "x1,x2,label\nlow,0.2,1\nhigh,0.3,0\n"


@pytest.fixture
def unfit(tmp_path, write_notebook):
    """The good corpus bundle (not validated) and a site whose catalog holds `tiny` plus two unfit exports."""
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    site = make_site(tmp_path / "sites", "site-1")
    for dataset_id, text in (("no_x2", CSV_MISSING_X2), ("x1_text", CSV_X1_TEXT)):
        (site.path / f"{dataset_id}.csv").write_text(text)
        sites.add_dataset(site, dataset_id, site.path / f"{dataset_id}.csv")
    return built, site


UNFIT_RELEASES = {
    "no-dataset": ([], "the bundle requests tiny and no dataset is released to it; release each with --dataset NAME=CATALOG_ID"),
    "missing-column": (["tiny=no_x2"], "released dataset no_x2 does not fit the requested schema of 'tiny': missing column 'x2'"),
    "wrong-kind": (["tiny=x1_text"], "released dataset x1_text does not fit the requested schema of 'tiny': column 'x1' is str, requested float"),
}


@pytest.mark.parametrize("case", sorted(UNFIT_RELEASES))
def test_approve_refuses_a_release_the_site_would_not_admit(unfit, caia, case):
    built, site = unfit
    datasets, message = UNFIT_RELEASES[case]
    options = [a for d in datasets for a in ("--dataset", d)]
    code, out, err = caia("approve", built.path, "--site", site.path, "--key", reviewer_key(site), *options)
    assert code == 2 and out == ""
    assert f"site site-1 would refuse this release: {message}" in one_line_error(err)
    assert list(site.approvals_dir.iterdir()) == []


def test_approve_refuses_a_bundle_that_did_not_pass_validation(unfit, caia):
    built, site = unfit
    code, out, err = caia("approve", built.path, "--site", site.path, "--key", reviewer_key(site), "--dataset", "tiny")
    assert code == 2 and out == ""
    assert (f"bundle {built.short_id} is not validated: ask the researcher for the bundle that passed validation "
            "(with its records/validation.json)") in one_line_error(err)
    assert list(site.approvals_dir.iterdir()) == []


@pytest.mark.parametrize("case", sorted(UNFIT_RELEASES))
def test_admission_refuses_the_same_release_for_the_same_reason(unfit, tmp_path, case):
    """The guard and `caia approve` share one check, so they cannot disagree: an approval signed
    without that check (by hand) is refused at admission with the very reason approve gives."""
    built, site = unfit
    releases = signing.parse_releases([d for d in UNFIT_RELEASES[case][0]])
    with pytest.raises(guard.Unfit) as before:
        guard.release_of(site, built.manifest["datasets"], releases)
    approve(site, built.id, releases)  # the raw signer, as an older caia signed
    app = build_job(built, ["site-1"], tmp_path / "job", name="caia-unfit") / "app_site-1"
    with pytest.raises(guard.Refusal) as refused:
        guard.admit(app, site.path)
    assert str(refused.value) == f"site-1 refused bundle {built.id}: {before.value}"
    assert UNFIT_RELEASES[case][1].startswith(str(before.value))


# -- messages: plurals, significant digits, round numbers ------------------------------------------


def test_plurals():
    assert [plural(n, "round") for n in (0, 1, 2)] == ["0 rounds", "1 round", "2 rounds"]
    assert plural(1, "site") == "1 site" and plural(1.0, "day") == "1 day" and plural(1.5, "day") == "1.5 days"
    assert plural(3, "entry", "entries") == "3 entries"
    assert finished_message(Status.parse({"rounds_done": 1, "sites": ["site-1"]}, ["site-1"]), ["site-1"], 1, {}) == "1 round with site-1"
    assert refused_message([], ["site-1"], 1).startswith("0 of 1 site admitted the bundle (refused: site-1)")


def test_metrics_keep_four_significant_digits():
    assert [metric(v) for v in (0.00075, 0.912345, 1.0, 12345.6, 123456.7, -98765.4, 3e-07, 2e20)] == [
        "0.00075", "0.9123", "1", "12346", "123457", "-98765", "3e-07", "2e+20"]
    assert metric(99999.6) == "99999.6"  # never 1e+05


def test_a_missing_metric_reads_as_missing():
    assert [metric(v) for v in (None, float("nan"), float("inf"), np.float64("nan"))] == ["missing"] * 4


def test_no_surface_prints_a_number_with_fixed_decimals():
    """Metrics go through `wording.metric`; a fixed `:.3f` would show 0.00075 as 0.001."""
    fixed = re.compile(r"\{[^{}]*:\.\d+f\}(?! s\b)")  # seconds may be shown whole
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "caia_jupyter").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if fixed.search(line)]
    assert offenders == []


def write_run(folder: Path, status: str, rounds: int = 1, records=()) -> Path:
    """A run directory as a launcher leaves it: run.json, outcome.json and metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"target": "simulator", "sites": {"site-1": ""}, "rounds": rounds,
                                                 "min_clients": 1}))
    (folder / "outcome.json").write_text(json.dumps({"status": status, "message": "", "completed_sites": ["site-1"]}))
    (folder / "status.json").write_text(json.dumps({"phase": "finished", "rounds_done": rounds, "rounds": rounds}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"site": s, "round": r, "name": n, "value": v, "time": i}) + "\n" for i, (s, r, n, v) in enumerate(records)))
    return folder


def test_a_run_prints_rounds_as_the_tables_number_them_and_metrics_with_their_digits(tmp_path, caia):
    from caia_jupyter.researcher.runs import Run

    run = Run(write_run(tmp_path / "run", "finished", rounds=1, records=[
        ("site-1", 0, "lr", 0.00075), ("site-1", 0, "num_samples", 12), ("site-1", 1, "accuracy", 0.912345),
        ("site-1", 1, "num_samples", 12)]))
    out = io.StringIO()  # not a terminal: a line per round, no progress bar
    follow(run, out)
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["round", "0"], ["final", "model"]]
    assert "lr=0.00075" in lines[0] and "accuracy=0.9123" in lines[1]
    assert set(run.metrics()["round"]) == {0, 1}  # the table numbers them alike: 0, then `rounds` for the final model
    code, out_text, _ = caia("status", run.path)
    assert code == 0 and "final global model: accuracy=0.9123" in out_text


def test_a_run_follows_and_shows_missing_metrics_as_missing(tmp_path, caia):
    from caia_jupyter.researcher.runs import Run

    every_value_missing = write_run(tmp_path / "none", "finished", rounds=1, records=[
        ("site-1", 1, "accuracy", None), ("site-1", 1, "num_samples", None)])
    some_missing = write_run(tmp_path / "some", "finished", rounds=1, records=[
        ("site-1", 0, "loss", 0.5), ("site-1", 0, "lr", None), ("site-1", 1, "accuracy", None)])
    for folder, expected in ((every_value_missing, ["final model  site-1: accuracy=missing"]),
                             (some_missing, ["round 0  site-1: loss=0.5 lr=missing", "final model  site-1: accuracy=missing"])):
        out = io.StringIO()
        follow(Run(folder), out)
        assert [line.strip() for line in out.getvalue().splitlines()] == expected
        code, shown, err = caia("status", folder)
        assert (code, err) == (0, "") and "note: site-1's accuracy at round 1 was not a finite number" in shown


# -- exit codes, as the README promises them ---------------------------------------------------------


def test_errors_exit_2_and_an_unvalidated_bundle_is_an_error(tmp_path, caia, write_notebook):
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    site = make_site(tmp_path / "sites", "site-1")
    code, out, err = caia("submit", built.path, "--sites", site.path, "--runs", tmp_path / "runs")
    assert code == 2 and out == "" and "is not validated: run caia validate" in one_line_error(err)
    assert not (tmp_path / "runs").exists()
    code, _, err = caia("status", tmp_path / "nowhere")
    assert code == 2 and "is not a caia run directory" in one_line_error(err)
    code, _, err = caia("frobnicate")
    assert code == 2 and "invalid choice" in one_line_error(err)


def test_verify_exits_1_when_the_bundle_is_not_intact(tmp_path, caia, write_notebook):
    built = compose.build(write_notebook("good"), tmp_path / "bundle")
    assert caia("verify", built.path)[0] == 0
    (built.path / "federated.py").write_text("tampered\n")
    code, out, _ = caia("verify", built.path)
    assert code == 1 and out.startswith("NOT INTACT")


@pytest.mark.slow
def test_validate_exits_1_when_the_bundle_fails(tmp_path, caia, write_notebook):
    path = write_notebook("good")
    import nbformat

    nb = nbformat.read(path, as_version=4)
    set_source(nb, "loss.backward()", "assert False, 'no'\n    loss.backward()")
    nbformat.write(nb, path)
    code, out, _ = caia("validate", path)
    assert code == 1 and out.startswith("validation FAILED")


@pytest.mark.parametrize("status, code", [("finished", 0), ("failed", 1), ("refused", 1), ("aborted", 1)])
def test_status_exits_1_when_the_run_did_not_finish(tmp_path, caia, status, code):
    run = write_run(tmp_path / "run", status)
    assert caia("status", run)[0] == code


def test_python_m_caia_jupyter_cli_runs_the_cli_with_its_exit_codes(tmp_path):
    def run(*args):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-m", "caia_jupyter.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    done = run("site", "init", tmp_path / "s", "--name", "site-1")
    assert done.returncode == 0 and (tmp_path / "s" / "site.json").is_file()
    done = run("site", "init", tmp_path / "t", "--name", "server")
    assert done.returncode == 2 and one_line_error(done.stderr).startswith("caia: error: site name 'server'")
    assert not (tmp_path / "t").exists()


def test_help_names_the_cell_magic_as_written(capsys):
    from caia_jupyter import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "%%federated cells" in out and "%federated cells" not in out.replace("%%federated", "")


def test_the_readme_states_these_exit_codes():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "Errors and refusals are one line on stderr with exit code 2 and nothing half-written" in readme
    assert "`submit` and `status` when the run ended `failed`, `refused` or `aborted`" in readme


def test_a_run_shows_rounds_done_as_a_count(tmp_path):
    from caia_jupyter.researcher.runs import Run

    assert repr(Run(write_run(tmp_path / "run", "finished", rounds=1))).endswith(": finished, 1/1 round done>")


def test_cli_counts_read_in_the_singular_for_one(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-1", "--max-approval-days", "1")
    assert code == 0 and "(approvals last at most 1 day)" in out
    (tmp_path / "one.csv").write_text("age\n61\n")
    code, out, _ = caia("site", "add-dataset", tmp_path / "s", "ages", tmp_path / "one.csv")
    assert code == 0 and out.strip() == "site-1: dataset ages, ','-separated, decimal '.', UTF-8, 1 column: age (int)"
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert code == 0 and "policy: approvals last at most 1 day" in out


def test_status_json_is_valid_json_whatever_the_metrics_hold(tmp_path, caia):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    folder = write_run(tmp_path / "run", "finished", rounds=1, records=[
        ("site-1", 1, "loss", float("nan")), ("site-1", 1, "acc", 1e308), ("site-1", 1, "num_samples", 1e308)])
    code, out, err = caia("status", folder, "--json")
    shown = json.loads(out, parse_constant=refuse)
    assert (code, err) == (0, "") and shown["final_metrics"] == {"sites": {"site-1": {"acc": 1e308, "num_samples": 1e308}}, "global": {}}
    assert shown["notes"] == ["site-1's loss at round 1 was not a finite number; it is recorded as missing"]


def test_a_folder_that_is_not_an_admin_startup_kit_is_named_before_any_connection(tmp_path):
    from caia_jupyter.contracts.errors import FlareError
    from caia_jupyter.targets.poc import admin_session

    with pytest.raises(FlareError) as refused:
        with admin_session(tmp_path / "kits" / "me@example.org"):
            pass
    assert str(refused.value) == (f"{tmp_path / 'kits' / 'me@example.org'} is not an NVFLARE admin startup kit (it has no "
                                  "startup/ folder); give the folder your federation's project admin provisioned for you")
