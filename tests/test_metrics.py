"""Metric records are untrusted: a name chosen by the code at a site must be a short identifier,
so no free text (a row value, a path) reaches the researcher through it."""

import json

import pytest

from caia_jupyter.aggregator.components import METRICS, MetricsReceiver
from caia_jupyter.contracts.metric_names import valid_name
from caia_jupyter.researcher.metrics import MetricsReader, Record

MARKER = "PHI-97.25"  # a row value at the site


@pytest.fixture
def receiver(tmp_path):
    receiver = MetricsReceiver(output_dir=str(tmp_path))
    receiver._run_dir = tmp_path
    receiver._file = open(tmp_path / METRICS, "a", encoding="utf-8")
    yield receiver
    receiver.finalize(None)


def send(receiver, site: str, values: dict, round: int = 0):
    """What a site's NVFLARE tracking writer sends: writer.add_scalars("metrics", values, global_step=round)."""
    from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType

    data = AnalyticsData(key="metrics", value=values, data_type=AnalyticsDataType.SCALARS, global_step=round)
    receiver.save(None, data.to_dxo().to_shareable(), site)


@pytest.mark.parametrize("name, valid", [
    ("train_loss", True), ("accuracy", True), ("_auc2", True), ("a" * 64, True),
    ("acc_" + MARKER, False), ("a" * 65, False), ("2nd", False), ("", False), ("val loss", False), ("val-loss", False),
    ("val.acc", False), ("/srv/site-1/data.csv", False), ("loss\n", False), ("tr\u0430in_loss", False), ("ｌｏｓｓ", False), (1, False),
])
def test_a_metric_name_is_a_short_ascii_identifier(name, valid):
    assert valid_name(name) is valid


def test_the_receiver_drops_a_record_whose_name_carries_a_row_value_and_logs_no_name(receiver, tmp_path, caplog):
    send(receiver, "site-1", {"train_loss": 0.5, f"acc_{MARKER}": 1.0}, round=1)
    send(receiver, "site-1", {"accuracy": float("nan"), "auc": True, "f1": 0.75}, round=1)
    written = (tmp_path / METRICS).read_text()
    kept = [(json.loads(line)["name"], json.loads(line)["value"]) for line in written.splitlines()]
    assert kept == [("train_loss", 0.5), ("accuracy", None), ("f1", 0.75)]  # NaN: recorded as missing
    assert MARKER not in written and MARKER not in json.dumps(receiver._answer(None, {"since": 0}, None))
    assert caplog.text.count("caia dropped 1 metric record(s) from site-1") == 2
    assert MARKER not in caplog.text


def test_a_record_read_back_with_a_name_that_is_no_metric_name_is_left_out(tmp_path):
    lines = [{"site": "site-1", "round": 0, "name": "loss", "value": 1.0, "time": 0.0},
             {"site": "site-1", "round": 0, "name": f"acc_{MARKER}", "value": 1.0, "time": 0.0}]
    (tmp_path / METRICS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert Record.parse(json.dumps(lines[1]).encode()) is None
    assert MetricsReader(tmp_path / METRICS).poll() == [Record("site-1", 0, "loss", 1.0, 0.0)]


@pytest.mark.parametrize("name", ["acc_PHI-97.25", "loss per class", "", "x" * 65, "größe"])
def test_the_site_refuses_a_metric_name_that_is_not_a_short_identifier_before_it_leaves(name):
    from caia_jupyter.contracts.errors import ContractError
    from caia_jupyter.site import runtime

    with pytest.raises(ContractError, match="names must be identifiers") as refused:
        runtime._metrics({name: 1.0}, "train")
    assert refused.value.failure == "bad_metrics"
    assert runtime._metrics({"val_loss": 0.5}, "evaluate") == {"val_loss": 0.5}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", '"0.9"', "true", "null", "[1]", "1" + "0" * 400, "1e999"])
def test_a_value_read_that_is_not_a_finite_number_is_missing(tmp_path, value):
    """Whatever wrote metrics.jsonl: every value read is a finite float or None, so it is valid JSON."""
    (tmp_path / METRICS).write_text('{"site": "site-1", "round": 0, "name": "loss", "value": %s, "time": 1}\n' % value)
    assert MetricsReader(tmp_path / METRICS).poll() == [Record("site-1", 0, "loss", None, 1.0)]


@pytest.mark.parametrize("time", ["NaN", "Infinity", '"1"', "true", "null"])
def test_a_record_whose_time_is_not_a_finite_number_is_left_out(tmp_path, time):
    (tmp_path / METRICS).write_text('{"site": "site-1", "round": 0, "name": "loss", "value": 1, "time": %s}\n' % time)
    assert MetricsReader(tmp_path / METRICS).poll() == []
