"""The approval lifecycle of a notebook: validation kept per bundle id, what changed since the version
a site approved, and the one verdict Submit gives (`targets.submit.check_ready`)."""

import hashlib
import json

import nbformat
import pytest

from caia_jupyter import overview
from caia_jupyter.contracts.errors import Busy, SubmitRefused, ValidationFailed
from caia_jupyter.researcher import compose, history, validation
from caia_jupyter.researcher.bundle import Bundle
from caia_jupyter.targets.submit import check_ready, submit
from conftest import approve, make_site, set_source, write_corpus


def edit(path, change):
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


def fake_pass(bundle):
    """A fake validation record of a pass, kept for `bundle`'s id as `validation.validate` keeps one."""
    history.remember_validation(bundle.path, bundle.id, {"bundle_id": bundle.id, "passed": True, "duration_s": 1.0}, b"{}")


def with_lr(value):
    return lambda nb: set_source(nb, "param.lr=0.1", f"param.lr={value}")


def test_going_back_to_code_that_passed_finds_its_validation_again(tmp_path):
    path = write_corpus("good", tmp_path)
    first = compose.build(path)
    fake_pass(first)
    assert validation.require_passed(first)["bundle_id"] == first.id
    edit(path, with_lr(0.2))
    second = compose.build(path)
    with pytest.raises(ValidationFailed, match=f"^bundle {second.short_id} is not validated: run "):
        validation.require_passed(second)
    edit(path, lambda nb: set_source(nb, "param.lr=0.2", "param.lr=0.1"))
    again = compose.build(path)
    assert again.id == first.id
    assert validation.require_passed(again)["bundle_id"] == first.id
    assert json.loads((again.records / "validation.json").read_text())["passed"] is True  # restored into the folder
    assert {b["bundle_id"] for b in history.builds(again.path)} == {first.id, second.id}


def test_a_kept_record_counts_only_for_the_id_it_names(tmp_path):
    built = compose.build(write_corpus("good", tmp_path))
    other = "sha256:" + "1" * 64
    history.entry(built.path, built.id).mkdir(parents=True, exist_ok=True)
    (history.entry(built.path, built.id) / history.VALIDATION).write_text(json.dumps({"bundle_id": other, "passed": True}))
    assert validation.record_of(built) is None
    with pytest.raises(ValidationFailed, match="is not validated"):
        validation.require_passed(built)


def test_changes_name_cells_params_datasets_and_rounds(tmp_path):
    path = write_corpus("good", tmp_path)
    old = compose.compose(path).build_record
    edit(path, lambda nb: set_source(nb, "rounds=2", "rounds=5"))
    edit(path, with_lr(0.2))
    assert history.changes(old, compose.compose(path).build_record) == ["param lr: 0.1 -> 0.2", "rounds: 2 -> 5"]
    edit(path, lambda nb: set_source(nb, "def build_model():", "def build_model():  # smaller"))
    changed = history.changes(old, compose.compose(path).build_record)
    index = next(c.ordinal for c in compose.compose(path).notebook.cells if "smaller" in c.source)
    assert changed[0] == f"federated cell {index} changed" and "param lr: 0.1 -> 0.2" in changed
    assert history.changes(old, old) == []
    renamed = {**old, "manifest": {**old["manifest"], "datasets": {"genes": {"columns": ["a"]}}}}
    assert history.changes(old, renamed) == ["dataset genes added", "dataset tiny removed"]


def test_the_panel_tells_an_older_approval_what_changed_and_how_to_approve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_corpus("good", tmp_path / "study")
    site1, site2 = make_site(path.parent / "sites", "site-1"), make_site(path.parent / "sites", "site-2")
    approved = compose.build(path)
    fake_pass(approved)
    for site in (site1, site2):
        approve(site, approved.id, {"tiny": "tiny"})
    dirs = overview.site_dirs_near(path)
    state = overview.notebook(path, dirs, tmp_path)
    assert state["short_id"] == approved.short_id and state["bundle_path"] == "study/bundles/good"
    assert state["changes"] is None and state["submit"] == {"ready": True, "reason": ""} and state["live_run"] is None
    assert [s["approval"] for s in state["sites"]] == ["approved", "approved"]

    edit(path, with_lr(0.2))
    state = overview.notebook(path, dirs, tmp_path)
    assert state["changes"] == {"approved_id": approved.id, "short_id": approved.short_id,
                                "summary": ["param lr: 0.1 -> 0.2"]}
    assert [s["approval"] for s in state["sites"]] == ["older", "older"]
    assert approved.short_id in state["sites"][0]["detail"]
    assert state["sites"][1]["approve_command"] == ("caia approve study/bundles/good --site study/sites/site-2 "
                                                    "--key KEY --dataset tiny")
    assert state["validation"]["state"] == "none"
    assert state["submit"] == {"ready": False, "reason": f"bundle {state['short_id']} is not validated: run Validate "
                                                         "(caia validate study/good.ipynb)"}

    built = compose.build(path)
    fake_pass(built)
    state = overview.notebook(path, dirs, tmp_path)
    assert state["submit"]["reason"] == (f"site-1 has not approved bundle {built.short_id}; its reviewer runs: "
                                         f"{state['sites'][0]['approve_command']}")
    approve(site1, built.id, {"tiny": "tiny"})
    state = overview.notebook(path, dirs, tmp_path)
    assert [s["approval"] for s in state["sites"]] == ["approved", "older"] and state["changes"]["short_id"] == approved.short_id
    assert state["submit"]["reason"].startswith(f"site-2 has not approved bundle {built.short_id}; its reviewer runs: caia approve ")


def test_submitting_a_notebook_refuses_what_is_not_ready_and_writes_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_corpus("good", tmp_path)
    site = make_site(tmp_path / "sites", "site-1")
    runs = tmp_path / "runs"
    with pytest.raises(SubmitRefused, match=r"^bundle [0-9a-f]{12} is not validated: run Validate \(caia validate good.ipynb\)$"):
        submit(path, [site.path], runs_root=runs)
    fake_pass(compose.build(path))
    edit(path, with_lr(0.3))  # saved after validation: the shown code is not what passed
    with pytest.raises(SubmitRefused, match="is not validated"):
        submit(path, [site.path], runs_root=runs)
    fake_pass(compose.build(path))
    with pytest.raises(SubmitRefused, match="^site-1 has not approved bundle .*--site sites/site-1 --key KEY --dataset tiny$"):
        submit(path, [site.path], runs_root=runs)
    assert not runs.exists()


def test_check_ready_is_the_same_for_a_bundle_not_yet_written(tmp_path):
    path = write_corpus("good", tmp_path)
    composed = compose.compose(path)
    unwritten = Bundle(compose.default_output(path), composed.id, composed.manifest)
    with pytest.raises(SubmitRefused, match="is not validated"):
        check_ready(unwritten, tmp_path / "runs", notebook=path)
    assert not unwritten.path.exists()


def test_a_second_validation_of_the_same_notebook_is_refused_at_once(tmp_path):
    first, second = write_corpus("good", tmp_path / "a"), write_corpus("good", tmp_path / "b")
    with validation.one_at_a_time(compose.default_output(first), first.name):
        with pytest.raises(Busy, match="^a validation of good.ipynb is already running; wait for it to finish$"):
            validation.validate_notebook(first)
        with validation.one_at_a_time(compose.default_output(second), second.name):  # another notebook is not blocked
            pass
    with validation.one_at_a_time(compose.default_output(first), first.name):  # released
        pass


def test_a_malformed_kept_build_is_left_out(tmp_path):
    built = compose.build(write_corpus("good", tmp_path))
    other = history.folder(built.path) / ("2" * 64)
    other.mkdir()
    (other / history.BUILD).write_text(json.dumps({"bundle_id": "sha256:" + "2" * 64, "built_at": "x",
                                                   "manifest": {"datasets": 3, "job": []}}))
    (history.folder(built.path) / "notes.txt").write_text("not an entry")
    assert [b["bundle_id"] for b in history.builds(built.path)] == [built.id]


# -- kept build records are untrusted: a record counts only when its manifest hashes to its id ----------

def approved_then_edited(tmp_path):
    """A notebook whose first build site-1 approved, then edited (lr 0.1 -> 0.2) and saved."""
    path = write_corpus("good", tmp_path / "study")
    site = make_site(path.parent / "sites", "site-1")
    approved = compose.build(path)
    approve(site, approved.id, {"tiny": "tiny"})
    edit(path, with_lr(0.2))
    return path, approved


def rewrite(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_a_kept_build_with_an_odd_cell_ordinal_does_not_break_the_panel(tmp_path):
    path, approved = approved_then_edited(tmp_path)
    rewrite(history.entry(approved.path, approved.id) / history.BUILD,
            lambda r: r.update(cells=[{"ordinal": [1], "sha256": "x"}]))
    state = overview.notebook(path, overview.site_dirs_near(path), tmp_path)
    assert state["sites"][0]["approval"] == "older"  # the id and manifest are sound: only the cells are unknown
    assert state["changes"]["summary"] == ["param lr: 0.1 -> 0.2"]


def test_what_changed_since_the_approved_version_is_not_taken_from_a_kept_record_its_id_does_not_cover(tmp_path):
    path, approved = approved_then_edited(tmp_path)
    kept = history.entry(approved.path, approved.id) / history.BUILD
    rewrite(kept, lambda r: r["manifest"]["job"]["params"].update(lr=0.2))  # "the approved version already had 0.2"
    assert history.builds(approved.path) == []
    state = overview.notebook(path, overview.site_dirs_near(path), tmp_path)
    assert state["changes"] is None and state["sites"][0]["approval"] == "none"


def test_a_planted_build_record_does_not_choose_the_next_bundles_dataset_columns(tmp_path):
    path = write_corpus("good", tmp_path)
    built = compose.build(path)
    honest = built.manifest["datasets"]["tiny"]["columns"]
    rewrite(built.path / "records" / "build.json",
            lambda r: r["manifest"]["datasets"]["tiny"].update(columns=[{"name": "patient_name", "kind": "str"}]))
    assert compose.compose(path).manifest["datasets"]["tiny"]["columns"] == honest


def test_a_malformed_earlier_build_record_is_not_an_unexpected_error_of_compose(tmp_path):
    path = write_corpus("good", tmp_path)
    built = compose.build(path)
    rewrite(built.path / "records" / "build.json",
            lambda r: r["manifest"]["datasets"]["tiny"].update(columns=[{"name": "x1", "kind": "string"}]))
    assert compose.compose(path).id == built.id  # the sample is read again


def test_the_job_holds_the_checked_bytes_even_when_the_bundle_folder_is_rebuilt_meanwhile(tmp_path, monkeypatch):
    # prepare() checks the bundle folder against the run's id, then spends seconds (NVFLARE's export, the
    # initial weights) making the job: a Validate of the edited notebook rebuilds the folder meanwhile.
    from caia_jupyter.contracts.manifest import bundle_id
    from caia_jupyter.targets import job, simulator

    path = write_corpus("good", tmp_path)
    site = make_site(tmp_path / "sites", "site-1")
    shown = compose.build(path)
    edit(path, with_lr(0.2))
    real = job.initial_weights

    def rebuilt_meanwhile(bundle, target):  # a fake stand-in for a concurrent Validate: the saved notebook rebuilt
        compose.build(path)
        return real(bundle, target)

    monkeypatch.setattr(job, "initial_weights", rebuilt_meanwhile)
    run_dir = simulator.create_run(shown, {"site-1": site.path}, tmp_path / "runs")
    simulator.prepare(run_dir)
    assert compose.read_build_record(shown.path)["bundle_id"] != shown.id  # the folder now holds the edited version
    copied = list((run_dir / "job").rglob("manifest.json"))
    assert copied and all(bundle_id(json.loads(p.read_text())) == shown.id for p in copied)
    module = next((run_dir / "job").rglob("custom/federated.py"))
    assert hashlib.sha256(module.read_bytes()).hexdigest() == shown.manifest["files"]["federated.py"]["sha256"]


def test_a_run_being_prepared_counts_as_live_and_not_as_failed(tmp_path):
    # Between create_run and the launcher's start the job is made (seconds): meanwhile a Submit from another
    # process must see the run as live, and the runs list must not show it failed.
    from caia_jupyter.researcher.runs import PREPARING, Run
    from caia_jupyter.targets import simulator
    from caia_jupyter.targets.submit import live_runs

    path = write_corpus("good", tmp_path)
    site = make_site(tmp_path / "sites", "site-1")
    built = compose.build(path)
    run_dir = simulator.create_run(built, {"site-1": site.path}, tmp_path / "runs")
    assert Run(run_dir).status == "starting"
    assert live_runs(tmp_path / "runs", built.id) == [run_dir]
    # a mark left by a process that is gone (or a reused pid) does not keep the run live
    mark = json.loads((run_dir / PREPARING).read_text())
    (run_dir / PREPARING).write_text(json.dumps({**mark, "process_started": mark["process_started"] - 1}))
    assert Run(run_dir).status == "failed"
    assert live_runs(tmp_path / "runs", built.id) == []


def test_a_notebook_named_like_a_history_folder_neither_erases_that_history_nor_is_broken_by_it(tmp_path):
    from caia_jupyter.contracts.errors import BundleError
    from caia_jupyter.researcher import bundle as bundles

    path = write_corpus("good", tmp_path)
    fake_pass(compose.build(path))
    twin = path.with_name("good.history.ipynb")
    twin.write_bytes(path.read_bytes())
    built_twin = compose.build(twin)
    edit(path, with_lr(0.2))
    compose.build(path)
    assert bundles.verify(built_twin.path)[1] == []  # the twin's bundle stays intact
    edit(path, lambda nb: set_source(nb, "param.lr=0.2", "param.lr=0.1"))
    assert validation.require_passed(compose.build(path))  # good's kept pass survives the twin's build
    # no bundle folder can be the folder of the histories
    hidden = path.with_name(".history.ipynb")
    hidden.write_bytes(path.read_bytes())
    with pytest.raises(BundleError, match=r"cannot be a bundle folder.*rename the notebook"):
        compose.build(hidden)
    assert not (tmp_path / "bundles" / ".history" / "build.json").exists()
    assert validation.require_passed(compose.build(path))


def test_a_history_entry_linked_outside_the_root_is_refused_before_any_write(tmp_path):
    from caia_jupyter.contracts.errors import BundleError
    from caia_jupyter.server import inputs

    root = tmp_path / "root"
    path = write_corpus("good", root)
    outside = tmp_path / "outside"
    outside.mkdir()
    composed = compose.compose(path)
    entry = history.entry(compose.default_output(path), composed.id)
    entry.parent.mkdir(parents=True)
    entry.symlink_to(outside, target_is_directory=True)
    with pytest.raises(inputs.OutsideRoot, match=r"^bundles/\.history/good/[0-9a-f]{64} leads outside"):
        inputs.refuse_outputs_outside_root(path, root)
    # outside the server too (`caia bundle`), the history is never written through a link, nor is anything else
    with pytest.raises(BundleError, match=r"is a symbolic link; caia writes the bundle's history there"):
        compose.build(path)
    assert list(outside.iterdir()) == [] and not compose.default_output(path).exists()


def test_validating_a_bundle_given_as_dot_keeps_its_record_beside_it_not_inside_it(tmp_path, monkeypatch):
    # `cd bundles/good && caia validate .`
    from caia_jupyter.researcher import bundle as bundles

    built = compose.build(write_corpus("good", tmp_path))
    monkeypatch.chdir(built.path)
    given = bundles.require_intact(".")
    fake_pass(given)
    assert bundles.verify(".")[1] == []
    assert validation.require_passed(Bundle(built.path, built.id, built.manifest))  # found from the notebook's side


def test_the_panels_submit_verdict_names_site_folders_relative_to_the_root(tmp_path):
    path = write_corpus("good", tmp_path / "study")
    make_site(path.parent / "sites", "site-1")
    twin = make_site(path.parent / "sites", "site-2")
    config = json.loads((twin.path / "site.json").read_text())
    (twin.path / "site.json").write_text(json.dumps({**config, "name": "site-1"}))
    broken = path.parent / "sites" / "site-3"
    broken.mkdir()
    (broken / "site.json").write_text("{")
    fake_pass(compose.build(path))
    state = overview.notebook(path, overview.site_dirs_near(path), tmp_path)
    reason = state["submit"]["reason"]
    assert reason == "two site directories are named site-1: study/sites/site-1 and study/sites/site-2"
    detail = next(s["detail"] for s in state["sites"] if s["path"] == "study/sites/site-3")
    assert str(tmp_path) not in detail and "study/sites/site-3/site.json" in detail


def test_kept_builds_are_checked_once_until_their_file_changes(tmp_path, monkeypatch):
    built = compose.build(write_corpus("good", tmp_path))
    calls = []
    real = history.checked
    monkeypatch.setattr(history, "checked", lambda record: calls.append(1) or real(record))
    assert [b["bundle_id"] for b in history.builds(built.path)] == [built.id]
    assert [b["bundle_id"] for b in history.builds(built.path)] == [built.id]
    assert len(calls) == 1  # the panel's polls do not re-read an unchanged record
    kept = history.entry(built.path, built.id) / history.BUILD
    record = json.loads(kept.read_text())
    record["manifest"]["job"]["rounds"] = 123456  # no longer hashes to its id (and the size changes)
    kept.write_text(json.dumps(record))
    assert history.builds(built.path) == []
    assert len(calls) == 2
