"""What a researcher could learn from a site's statistics by asking an odd request, or by running an
approved request again and again with the server (the researcher's) choosing histogram edges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from caia_jupyter.contracts.manifest import StatisticsSpec
from caia_jupyter.site.statistics import Thresholds, _Cleansers, described, taken_ranges
from test_explore import in_two_rounds, patients, site_answer


def test_a_request_naming_a_column_or_quantile_twice_is_refused():
    # a site would fail on it (two columns of one name), after admission, instead of the request saying so
    with pytest.raises(ValidationError, match="column 'age' is named twice in columns="):
        StatisticsSpec(columns=["age", "size", "age"], statistics=["count"])
    with pytest.raises(ValidationError, match="quantile 0.5 is named twice"):
        StatisticsSpec(columns=["age"], statistics=["count", "quantile"], quantiles=[0.5, 0.25, 0.5])


def test_every_run_of_a_request_bins_over_the_range_its_first_run_took(tmp_path):
    # the server chooses a range a request leaves to NVFLARE; one holding the extremes the site sent,
    # with its middle edge at 76 in one run and at 78 in the next, releases two top bins of at least
    # 10 whose difference is the patients aged 76 or 77: a count below the minimum
    frame = patients(old=12)  # 12 aged 97, the others 30 to 79
    spec = StatisticsSpec(columns=["age"], statistics=["count", "histogram"], histograms={"age": {"bins": 2}})
    taken = taken_ranges(tmp_path / "statistics.ranges.json", "sha256:" + "0" * 64)

    def top_bin(high):  # one run of the request: a new filter, the range [0, high) the server chose
        run = _Cleansers(Thresholds(max_bins_percent=100), spec, "seed", taken)
        histogram = in_two_rounds(run, site_answer(frame, spec, (0, high)))["histogram"]["d"].get("age")
        return None if histogram is None else histogram.bins[1].sample_count

    assert top_bin(152) == (frame["age"] >= 76).sum() >= 10  # the first run takes [0, 152)
    assert top_bin(156) is None  # a later run with other edges: withheld
    assert top_bin(152) == (frame["age"] >= 76).sum()  # the same edges again
    other = _Cleansers(Thresholds(max_bins_percent=100), spec, "seed", taken_ranges(tmp_path / "r.json", "sha256:" + "1" * 64))
    assert in_two_rounds(other, site_answer(frame, spec, (0, 156)))["histogram"]["d"]  # another request: its own first range


def test_a_sites_min_and_max_are_its_datas_whatever_range_the_servers_first_round_asks():
    # with a histogram range in the server's first-round config, NVFLARE's executor sends that range
    # as the site's min and max; noised from a seed of the value, the site would answer noisy(v) for
    # any v the server picks, and the v whose answer matches the site's real noisy min is its min
    frame = patients()
    spec = StatisticsSpec(columns=["age"], statistics=["count", "histogram"], histograms={"age": {"bins": 2}})
    data = {"d": described(frame, spec)}

    def sent(low, high):  # what the site sends in round one when the executor took [low, high] as its extremes
        answer = site_answer(frame, spec)
        answer["min"]["d"]["age"], answer["max"]["d"]["age"] = low, high
        out = _Cleansers(Thresholds(max_bins_percent=100), spec, "seed", data=data).apply(answer, "site-1")[0]
        return out["min"]["d"]["age"], out["max"]["d"]["age"]

    real = sent(frame["age"].min(), frame["age"].max())
    assert real[0] < frame["age"].min() and real[1] > frame["age"].max()  # noised
    assert {sent(v, v + 50) for v in range(20, 45)} == {real}  # no guess of the min changes the answer


def test_two_first_runs_at_once_cannot_both_take_a_range(tmp_path, monkeypatch):
    # two jobs of one approved request started together: each reads the ranges file before the other
    # writes it, so each would take its own range, and their difference is a count below the minimum
    import threading

    from caia_jupyter.site import statistics

    both_read = threading.Barrier(2)

    def read_then_wait(path, read=statistics.read_ranges):
        found = read(path)
        try:
            both_read.wait(timeout=1)  # a job that reads while the other holds the file waits in vain
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(statistics, "read_ranges", read_then_wait)
    taken = taken_ranges(tmp_path / "statistics.ranges.json", "sha256:" + "0" * 64)
    answers = []
    runs = [threading.Thread(target=lambda high=high: answers.append(taken("d", "age", 0, high))) for high in (152, 156)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sorted(answers) == [False, True]


def test_a_ranges_file_the_site_cannot_read_takes_no_range(tmp_path):
    # forgetting the ranges taken would let the next run take other edges
    file = tmp_path / "statistics.ranges.json"
    file.write_text("{not json", encoding="utf-8")
    assert taken_ranges(file, "sha256:" + "0" * 64)("d", "age", 0, 152) is False
    assert file.read_text(encoding="utf-8") == "{not json"
