"""The run widget's state, read from a run directory written by hand (a stand-in for a live run)."""

import json

import pytest

from caia_jupyter.kernel.widgets import RunWidget
from caia_jupyter.researcher.runs import Run


@pytest.fixture
def recorded_run(tmp_path):
    """A fake run directory with what the launcher and the server write, mid-run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"sites": {"site-1": "/s1", "site-2": "/s2"}, "rounds": 3,
                                              "min_clients": 1, "bundle_id": "sha256:x", "target": "simulator"}))
    (run / "sites.json").write_text(json.dumps({"site-1": {"state": "approved"},
                                                "site-2": {"state": "refused", "reason": "site-2 refused bundle sha256:x: no approval"}}))
    (run / "status.json").write_text(json.dumps({"phase": "training", "rounds_done": 1, "rounds": 3, "sites": ["site-1"]}))
    (run / "launcher.pid").write_text("999999999")
    return run


def append(run_dir, *records):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for site, round, name, value in records:
            f.write(json.dumps({"site": site, "round": round, "name": name, "value": value, "time": 0.0}) + "\n")


def finish(run_dir):
    (run_dir / "outcome.json").write_text(json.dumps({"status": "finished", "message": "3 rounds",
                                                      "completed_sites": ["site-1"], "failed_sites": {}}))


def test_the_widget_shows_progress_sites_refusals_and_records(recorded_run):
    append(recorded_run, ("site-1", 0, "accuracy", 0.5), ("site-1", 0, "loss", 0.9))
    finish(recorded_run)
    widget = RunWidget(Run(recorded_run))
    widget.refresh()
    assert (widget.status, widget.rounds_done, widget.rounds) == ("finished", 1, 3)
    assert widget.sites == {"site-1": "done", "site-2": "refused"}
    assert widget.reasons == {"site-2": "site-2 refused bundle sha256:x: no approval"}
    assert widget.records == [["site-1", 0, "accuracy", 0.5], ["site-1", 0, "loss", 0.9]]
    assert widget.bundle_id == "sha256:x" and widget.tones == {"site-1": "ok", "site-2": "bad"}
    assert widget.headline == "finished: 1 round with site-1; site-2 refused the bundle"
    assert widget.global_records == [[0, "accuracy", 0.5], [0, "loss", 0.9]]
    assert widget.final_round is None  # this run left no global model


def test_each_refresh_sends_one_batched_message_with_only_new_records(recorded_run):
    widget = RunWidget(Run(recorded_run))
    sent = []
    widget.comm.send = lambda data=None, **kwargs: sent.append(data)
    append(recorded_run, ("site-1", 0, "accuracy", 0.5))
    widget.refresh()
    append(recorded_run, ("site-1", 1, "accuracy", 0.7))
    with open(recorded_run / "metrics.jsonl", "a") as f:
        f.write('{"site": "site-1", "round": 2, "na')  # a record still being written waits
    widget.refresh()
    assert len(sent) == 2  # one state message per refresh, whatever changed
    assert widget.records == [["site-1", 0, "accuracy", 0.5], ["site-1", 1, "accuracy", 0.7]]


def test_a_widget_built_after_a_kernel_restart_recovers_everything_from_the_run_directory(recorded_run):
    append(recorded_run, *[("site-1", r, "accuracy", r / 10) for r in range(3)])
    finish(recorded_run)
    first, second = RunWidget(Run(recorded_run)), RunWidget(Run(recorded_run))
    first.refresh()
    second.refresh()
    assert first.records == second.records and len(second.records) == 3


def test_follow_stops_by_itself_when_the_run_ends(recorded_run):
    finish(recorded_run)
    widget = RunWidget(Run(recorded_run)).follow(interval=0.01)
    widget._thread.join(timeout=5)
    assert not widget._thread.is_alive() and widget.status == "finished"


def test_a_run_whose_launcher_vanished_reads_as_failed(recorded_run):
    run = Run(recorded_run)
    assert run.status == "failed"  # pid 999999999 does not exist and no outcome was written
    assert "launcher is gone" in run.message


def test_the_widget_shows_the_runs_notes_and_only_its_own_sites_records(recorded_run):
    append(recorded_run, ("site-1", 0, "accuracy", None), ("site-1", 0, "loss", 0.9), ("site-9", 0, "loss", 0.1))
    status = json.loads((recorded_run / "status.json").read_text())
    status["excluded"] = [{"site": "site-1", "round": 0, "reason": "non_finite_weights"},
                          {"site": ["site-1"], "round": 0, "reason": "no_examples"}]
    (recorded_run / "status.json").write_text(json.dumps(status))
    widget = RunWidget(Run(recorded_run))
    widget.refresh()
    assert widget.notes == ["site-1's update of round 0 was left out of the average: its weights hold NaN or values infinite in their dtype",
                            "site-1's accuracy at round 0 was not a finite number; it is recorded as missing"]
    assert widget.records == [["site-1", 0, "accuracy", None], ["site-1", 0, "loss", 0.9]]
    assert "notes" in widget.get_state()
