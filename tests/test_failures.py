"""What a site may say about its failure: a closed vocabulary, parsed strictly wherever it is received."""

import json
import traceback

import pytest
import torch

from caia_jupyter.aggregator.components import FAILURES, MetricsReceiver
from caia_jupyter.contracts import failures
from caia_jupyter.researcher.runs import Run
from caia_jupyter.site import flare_client, runtime
from caia_jupyter.site.context import Context
from caia_jupyter.targets import remote

MARKER = "PATIENT-4711-MARKER"
UNKNOWN = {"entry": "runtime", "round": None, "category": "unknown"}

HOSTILE = {
    "a report with an extra field": {"entry": "train", "round": 1, "category": "raised", "message": MARKER},
    "a category outside the vocabulary": {"entry": "train", "round": 1, "category": MARKER},
    "an entry point outside the vocabulary": {"entry": MARKER, "round": 1, "category": "raised"},
    "a round given as text": {"entry": "train", "round": "1", "category": "raised"},
    "a round given as a bool": {"entry": "train", "round": True, "category": "raised"},
    "a round given as a float": {"entry": "train", "round": 1.0, "category": "raised"},
    "a negative round": {"entry": "train", "round": -1, "category": "raised"},
    "a huge round": {"entry": "train", "round": 10**30, "category": "raised"},
    "a missing round": {"entry": "train", "category": "raised"},
    "a list": ["train", 1, "raised"],
    "a number": 42,
    "nothing": None,
    "free text": f"ValueError: {MARKER}",
    "JSON with an extra field": json.dumps({"entry": "train", "round": 1, "category": "raised", "x": MARKER}),
    "a long JSON report": json.dumps({"entry": "train", "round": 1, "category": "raised"}) + " " * 500 + MARKER,
    "JSON that is not an object": json.dumps([MARKER]),
    "a huge string": MARKER * 10_000,
}


def test_every_category_renders_one_fixed_line_naming_the_site_entry_point_and_round():
    for category in failures.CATEGORIES:
        report = failures.Report(entry="train", round=2, category=category)
        text = failures.describe("site-2", report)
        assert text.startswith("site-2 failed"), text
        if category != "unknown":
            assert text.startswith("site-2 failed in train at round 2: "), text
    before_rounds = failures.describe("site-1", failures.Report(entry="load_data", round=None, category="raised"))
    assert before_rounds == "site-1 failed in load_data: the federated code raised an exception (details kept at the site)"


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_the_receiver_keeps_anything_but_a_report_as_unknown_with_nothing_of_what_was_sent(tmp_path, case):
    receiver = MetricsReceiver(output_dir=str(tmp_path))
    receiver._run_dir = tmp_path
    receiver.save_failure("site-2", HOSTILE[case])
    written = (tmp_path / FAILURES).read_text()
    assert json.loads(written) == {"site-2": UNKNOWN}
    assert MARKER not in written and "train" not in written


def test_the_receiver_reads_a_report_sent_through_nvflare_analytics_and_keeps_the_first(tmp_path):
    from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType

    receiver = MetricsReceiver(output_dir=str(tmp_path))
    receiver._run_dir = tmp_path

    def send(site, text):
        shareable = AnalyticsData(key=failures.FAILURE_TAG, value=text, data_type=AnalyticsDataType.TEXT).to_dxo().to_shareable()
        receiver.save(None, shareable, site)

    send("site-1", json.dumps({"entry": "train", "round": 2, "category": "raised"}))
    send("site-1", json.dumps({"entry": "evaluate", "round": 3, "category": "bad_metrics"}))
    send("site-2", f"ValueError: {MARKER}")
    assert json.loads((tmp_path / FAILURES).read_text()) == {
        "site-1": {"entry": "train", "round": 2, "category": "raised"}, "site-2": UNKNOWN}


def test_the_follower_keeps_only_reports_of_the_runs_own_sites_parsed_strictly(tmp_path):
    received = {"site-1": {"entry": "train", "round": 0, "category": "raised"},
                "site-2": {"entry": "train", "round": 0, "category": "raised", "why": MARKER},
                MARKER: {"entry": "train", "round": 0, "category": "raised"}}
    reports = remote.write_failures(received, tmp_path, ["site-1", "site-2"])
    assert {site: r.model_dump() for site, r in reports.items()} == {
        "site-1": {"entry": "train", "round": 0, "category": "raised"}, "site-2": UNKNOWN}
    assert MARKER not in (tmp_path / FAILURES).read_text()
    assert remote.write_failures(f"site-1: {MARKER}", tmp_path, ["site-1"]) == {}


def test_collecting_a_downloaded_result_parses_the_servers_failure_reports_strictly(tmp_path):
    result = tmp_path / "result" / "workspace"
    result.mkdir(parents=True)
    (result / "metrics.jsonl").write_text('{"site": "site-1", "round": 0, "name": "accuracy", "value": 0.5, "time": 0}\n')
    (result / FAILURES).write_text(json.dumps({"site-1": f"ValueError: {MARKER}"}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    remote.collect(tmp_path / "result", run_dir, ["site-1"])
    assert (run_dir / "metrics.jsonl").read_text() == (result / "metrics.jsonl").read_text()
    assert json.loads((run_dir / FAILURES).read_text()) == {"site-1": UNKNOWN}


def test_a_run_renders_failures_only_from_the_vocabulary(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"sites": {"site-1": "", "site-2": ""}, "rounds": 3, "min_clients": 1,
                                                   "bundle_id": "sha256:x", "target": "poc"}))
    (tmp_path / "outcome.json").write_text(json.dumps({
        "status": "failed", "message": "m", "completed_sites": [],
        "failed_sites": {"site-1": {"entry": "train", "round": 2, "category": "raised"},
                         "site-2": f"ValueError: {MARKER}", MARKER: {"entry": "train", "round": 2, "category": "raised"}}}))
    run = Run(tmp_path)
    assert run.failures == {
        "site-1": "site-1 failed in train at round 2: the federated code raised an exception (details kept at the site)",
        "site-2": f"site-2 failed: {failures.UNKNOWN_TEXT}"}
    assert run.sites == {"site-1": "failed", "site-2": "failed"}


# -- at the site: the whole story stays in the app folder, the report names entry point, round, category --

class FakeFlareLog:
    """Stands in for nvflare.client.log (no NVFLARE job here): collects what a site would send."""

    def __init__(self):
        self.sent = []

    def __call__(self, key, value, data_type):
        self.sent.append((key, value))


def build_model():
    return torch.nn.Linear(2, 2)


def load_data(ctx):
    return ctx.dataset("tiny")


def train(model, data, ctx):
    raise AssertionError(f"row {MARKER} looks wrong")


def evaluate(model, data, ctx):
    return {"accuracy": 1.0}


@pytest.fixture
def site(tmp_path, monkeypatch):
    sent = FakeFlareLog()
    monkeypatch.setattr("nvflare.client.log", sent)
    data = tmp_path / "tiny.csv"
    data.write_text("x1,label\n0.5,1\n")
    ctx = Context("site-1", {}, {"tiny": {"path": str(data), "columns": [{"name": "x1", "kind": "float"}]}}, rounds=3)
    return tmp_path, ctx, sent


def fail(site, round, call, **entry_points):
    app_dir, ctx, sent = site
    entry = runtime.EntryPoints(**{"build_model": build_model, "load_data": load_data, "train": train,
                                   "evaluate": evaluate, **entry_points})
    with pytest.raises(flare_client.SiteStopped) as stopped:
        with flare_client.failure_record(app_dir, entry, round):
            call(entry, ctx)
    shown = "".join(traceback.format_exception(stopped.value))  # what NVFLARE would log and pass on
    assert MARKER not in shown and "Error" not in shown.splitlines()[-1] and str(app_dir) not in shown.splitlines()[-1]
    (tag, value), = sent.sent
    assert tag == failures.FAILURE_TAG and MARKER not in value
    return json.loads(value), json.loads((app_dir / failures.FAILURE_FILE).read_text())


def test_the_researchers_exception_is_reported_by_entry_point_and_round_and_kept_whole_at_the_site(site):
    report, record = fail(site, 2, lambda entry, ctx: runtime.run_round(entry, build_model(), None, ctx))
    assert report == {"entry": "train", "round": 2, "category": "raised"}
    assert record["exception"] == "AssertionError" and MARKER in record["message"] and MARKER in record["traceback"]


def test_asking_for_an_unreleased_dataset_is_reported_without_its_name(site):
    report, record = fail(site, None, lambda entry, ctx: entry.load_data(ctx), load_data=lambda ctx: ctx.dataset(MARKER))
    assert report == {"entry": "load_data", "round": None, "category": "dataset_not_released"}
    assert MARKER in record["message"]


def test_caias_own_reasons_are_reported_by_category(site):
    report, _ = fail(site, None, lambda entry, ctx: runtime.build_model(entry), build_model=lambda: MARKER)
    assert report == {"entry": "build_model", "round": None, "category": "not_a_module"}


def test_a_metric_that_is_not_a_number_is_reported_without_its_name_or_value(site):
    report, record = fail(site, 3, lambda entry, ctx: runtime.evaluate(entry, build_model(), None, ctx),
                          evaluate=lambda model, data, ctx: {MARKER: MARKER})
    assert report == {"entry": "evaluate", "round": 3, "category": "bad_metrics"}
    assert MARKER in record["message"]


def test_a_dataset_that_changed_at_the_site_is_reported_as_such(site):
    app_dir, ctx, _ = site
    (app_dir / "tiny.csv").write_text(f"x1,label\n{MARKER},1\n")  # x1 is no longer a float column
    report, _ = fail(site, None, lambda entry, ctx: entry.load_data(ctx))
    assert report == {"entry": "load_data", "round": None, "category": "schema_changed"}
