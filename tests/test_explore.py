"""Federated statistics: a statistics bundle on NVFLARE's own statistics workflow, per site and pooled,
with each site's thresholds enforced at the site."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest

from caia_jupyter.contracts.errors import NotebookError, SubmitRefused
from caia_jupyter.contracts.fileset import listing_problems
from caia_jupyter.researcher import bundle as bundles
from caia_jupyter.contracts.manifest import HistogramSpec, StatisticsSpec
from caia_jupyter.researcher.explore import PARTIAL, SUPPRESSED, Result, parse, statistics_bundle
from caia_jupyter.reviewer import signing
from caia_jupyter.site import sites as site_dirs
from caia_jupyter.site.statistics import (Thresholds, _Cleansers, coarse, complementary, described, read_thresholds, restrict,
                                          set_thresholds, taken_ranges, withhold)
from caia_jupyter.targets.demo_sites import make_sites
from caia_jupyter.targets.explore import explore

COLUMNS = ["mean radius", "mean texture", "mean area"]
STAGES = ["I", "II", "III", "IV"]
MISSING = {"site-1": 0, "site-2": 12, "site-3": 4}  # values of "mean texture" missing at each site
REQUEST = ["dataset=breast_cancer:sample.csv", "columns=mean radius,mean texture,mean area",
           "histograms=mean radius:2,mean texture:2:5:45", "categories=stage:I|II|III|IV", "quantiles=0.25,0.5,0.75", "min_clients=3"]


def with_stages(frame: pd.DataFrame, rare: int | None) -> pd.DataFrame:
    """`frame` with a stage column: I, II, III in turn, and "IV" on `rare` rows (None: on a third of them)."""
    stage = np.array([STAGES[i % 3] for i in range(len(frame))], dtype=object)
    stage[: (len(frame) // 3 if rare is None else rare)] = "IV"
    return frame.assign(stage=stage)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """The demo's three sites, each CSV with a stage column; site-1 has exactly 3 patients of stage IV;
    "mean texture" has MISSING values missing.
    A notebook folder with a synthetic sample and the request."""
    root = tmp_path_factory.mktemp("explore")
    made = make_sites(root / "sites")
    frames = {}
    for demo in made:
        path = demo.site.path / "data" / "breast_cancer.csv"
        frame = with_stages(pd.read_csv(path), 3 if demo.site.name == "site-1" else None)
        frame.loc[frame.index[-MISSING[demo.site.name]:] if MISSING[demo.site.name] else [], "mean texture"] = np.nan
        frame.to_csv(path, index=False)
        site_dirs.add_dataset(demo.site, "breast_cancer", path, replace=True)
        frames[demo.site.name] = frame
    work = root / "work"
    work.mkdir()
    sample = with_stages(pd.read_csv(made[0].site.path / "data" / "breast_cancer.csv").head(12), None)
    sample.to_csv(work / "sample.csv", index=False)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%federated explore " + " ".join(
        f"'{t}'" for t in REQUEST))])
    nbformat.write(notebook, work / "explore.ipynb")
    return made, frames, work


def approve_all(made, bundle):
    for demo in made:
        signing.approve(demo.site, bundle.id, {"breast_cancer": "breast_cancer"}, demo.reviewer_key, bundle=bundle)


def test_request_parses_into_a_spec():
    samples, spec, min_clients = parse(REQUEST)
    assert samples == {"breast_cancer": "sample.csv"} and min_clients == 3
    assert spec["histograms"] == {"mean radius": {"bins": 2}, "mean texture": {"bins": 2, "range": [5.0, 45.0]}}
    assert spec["statistics"] == ["count", "failure_count", "mean", "stddev", "histogram", "quantile"]
    assert spec["categories"] == {"stage": STAGES}
    with pytest.raises(NotebookError, match="histograms=COLUMN:BINS"):
        parse(["dataset=a:s.csv", "columns=x", "histograms=x:1:2"])
    # count(grade) - (grade=1) - (grade=2) would give the rows of any other grade, however few
    with pytest.raises(ValueError, match="'grade' is both described and counted by category; request one of the two"):
        StatisticsSpec(columns=["grade"], statistics=["count"], categories={"grade": ["1", "2"]})


def test_a_slip_in_the_request_is_named_by_its_key_with_the_fix(tmp_path):
    with pytest.raises(NotebookError, match=r"'histogram=x:4': did you mean histograms=\? keys are dataset, columns"):
        parse(["dataset=a:s.csv", "columns=x", "histogram=x:4"])
    with pytest.raises(NotebookError, match=r"'categories=stage:I,II': write categories=COLUMN:A\|B\|C, the categories separated by \|"):
        parse(["dataset=a:s.csv", "columns=x", "categories=stage:I,II"])
    pd.DataFrame({"age": [50, 61, 70], "stage": ["I", "II", "I"]}).to_csv(tmp_path / "s.csv", index=False)
    for tokens, problem in ((["dataset=a:s.csv"], "no columns=; add columns=..."),
                            (["dataset=a:s.csv", "columns=age", "statistics=count,median"],
                             "statistics= 'median': input should be 'count', 'failure_count'"),
                            (["dataset=a:s.csv", "columns=age", "histograms=age:0"],
                             "histograms= age bins 0: input should be greater than or equal to 1")):
        with pytest.raises(NotebookError) as caught:
            statistics_bundle(tmp_path / "nb.ipynb", tokens, tmp_path / "b")
        assert str(caught.value).startswith(f"%federated explore: {problem}") and "\n" not in str(caught.value)
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_the_request_is_read_from_the_notebooks_line_in_each_form_the_magic_takes(tmp_path):
    from caia_jupyter.researcher.explore import request_of

    request = ["dataset=breast_cancer:s.csv", "columns=mean radius,mean area"]
    for line in ("%federated explore dataset=breast_cancer:s.csv 'columns=mean radius,mean area' --sites a b",
                 "result = %federated explore nb.ipynb dataset=breast_cancer:s.csv 'columns=mean radius,mean area' --sites $x"):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = 1\n{line}\nresult")]), tmp_path / "nb.ipynb")
        assert request_of(tmp_path / "nb.ipynb") == request
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# %federated explore dataset=a:s.csv")]),
                   tmp_path / "nb.ipynb")
    with pytest.raises(NotebookError, match="nb.ipynb has no `%federated explore dataset=... columns=...` line; add one"):
        request_of(tmp_path / "nb.ipynb")


def test_bundle_holds_no_code_and_the_sample_must_fit(federation, tmp_path):
    _, _, work = federation
    bundle = statistics_bundle(work / "explore.ipynb", output=tmp_path / "b")
    assert set(bundle.manifest["files"]) == {"config_fed_client.json"}
    assert bundles.verify(bundle.path)[1] == []
    assert listing_problems({**bundle.manifest["files"], "federated.py": {}}, bundle.manifest["job"])
    with pytest.raises(NotebookError, match="'stage' of dataset 'breast_cancer' is str, not numeric"):
        statistics_bundle(work / "explore.ipynb", ["dataset=breast_cancer:sample.csv", "columns=stage"], tmp_path / "c")
    with pytest.raises(NotebookError, match="does not have"):
        statistics_bundle(work / "explore.ipynb", ["dataset=breast_cancer:sample.csv", "columns=age"], tmp_path / "d")


def test_site_thresholds(tmp_path):
    assert read_thresholds(tmp_path) == Thresholds()
    assert set_thresholds(tmp_path, min_count=20, extremes=False).min_count == 20
    assert read_thresholds(tmp_path).extremes is False
    with pytest.raises(Exception, match="min_count"):
        set_thresholds(tmp_path, min_count=0)
    assert read_thresholds(tmp_path).min_count == 20  # nothing written
    stats = {"count": {"d": {"a": 3, "b": 50}}, "failure_count": {"d": {"a": 1, "b": 4}},
             "min": {"d": {"a": 1.0, "b": 2.0}}, "max": {"d": {"a": 3.0, "b": 9.0}}}
    withhold(stats, Thresholds(min_count=10, extremes=False), StatisticsSpec(columns=["a", "b"], statistics=["count"]))
    assert stats == {"count": {"d": {}}, "failure_count": {"d": {}}, "min": {"d": {}}, "max": {"d": {}}}  # b: 4 missing


@pytest.mark.slow
def test_pooled_statistics_equal_pandas_and_rare_category_is_suppressed(federation, tmp_path):
    made, frames, work = federation
    bundle = statistics_bundle(work / "explore.ipynb")
    with pytest.raises(SubmitRefused, match="site-1 has not approved statistics bundle"):
        explore(work / "explore.ipynb", [d.site.path for d in made], tmp_path / "runs")
    approve_all(made, bundle)
    set_thresholds(made[0].site.path, extremes=False)  # the spec's range still gives site-1 a texture histogram
    result, run = explore(work / "explore.ipynb", [d.site.path for d in made], tmp_path / "runs")
    assert result is not None, run.message
    pooled = pd.concat(frames.values())
    complete = ["mean radius", "mean area"]  # no site withholds any of them
    for statistic, expected in (("count", pooled[complete].count()), ("mean", pooled[complete].mean()),
                                ("stddev", pooled[complete].std())):
        table = result.table(statistic)
        for column in complete:
            assert abs(table.loc[("breast_cancer", column), "pooled"] - expected[column]) < 1e-9, (statistic, column)
    counts = result.table("count")
    for name, frame in frames.items():
        for column in result.spec["histograms"]:
            bins = result.histogram(column)[name]
            if (name, column) == ("site-3", "mean texture"):
                continue  # withheld with every statistic of the column there (4 missing values)
            shown = [n for n in bins if n != SUPPRESSED]
            assert frame[column].count() == counts.loc[("breast_cancer", column), name]
            # what the released bins leave of the count: nothing when none is suppressed, else at least the minimum
            assert frame[column].count() - sum(shown) in ((0,) if len(shown) == len(bins) else range(10, len(frame) + 1))
    assert (result.histogram("mean texture")[["site-1", "site-2"]] != SUPPRESSED).all(axis=None)
    # missing values: 12 at site-2 are reported; 4 at site-3, below its minimum count of 10, withhold every
    # statistic of the column there (its count would reveal them); the pooled values then read partial
    missing = result.table("failure_count").loc[("breast_cancer", "mean texture")]
    assert (missing["site-1"], missing["site-2"], missing["site-3"], missing["pooled"]) == (0, 12, SUPPRESSED, PARTIAL)
    assert all("site-3" not in by_site for by_site in result.raw["mean texture"].values())
    assert counts.loc[("breast_cancer", "mean texture"), "pooled"] == PARTIAL
    # stage IV: 3 patients at site-1, below its minimum count of 10: suppressed there, and nothing else of
    # it; so is the smallest other stage, so that the total minus the released stages gives no count below 10
    stages = counts.loc["breast_cancer"].loc[[f"stage={stage}" for stage in STAGES]]
    hidden = stages.index[stages["site-1"] == SUPPRESSED]
    assert "stage=IV" in hidden and len(hidden) == 2
    assert len(frames["site-1"]) - stages["site-1"].drop(hidden).sum() >= 10
    for stage in hidden:
        assert stages.loc[stage, "pooled"] == PARTIAL
        assert all("site-1" not in by_site for by_site in result.raw[stage].values())
    assert {"site": "site-1", "dataset": "breast_cancer", "feature": "stage=IV", "statistic": "count"} in result.suppressed()
    assert counts.loc[("breast_cancer", "stage=I"), "site-2"] == (frames["site-2"]["stage"] == "I").sum()
    medians = result.table("quantile").xs(0.5, level="q").loc["breast_cancer", "pooled"]
    for column in complete:  # NVFLARE's t-digest, merged: close to, not exactly, the pooled median
        assert abs(medians[column] - pooled[column].median()) < 0.05 * pooled[column].std(), column
    json.dumps(result.to_json())
    assert result.plot_histograms().axes and result.plot_missing().axes


@pytest.mark.slow
def test_statistics_bundle_not_approved_at_a_site_is_refused(federation, tmp_path):
    made, _, work = federation
    bundle = statistics_bundle(work / "explore.ipynb", ["dataset=breast_cancer:sample.csv", "columns=mean radius",
                                                        "min_clients=2"], tmp_path / "bundle")
    approve_all(made[:2], bundle)
    result, run = explore(bundle.path, [d.site.path for d in made], tmp_path / "runs")
    assert list(run.refusals) == ["site-3"]
    assert run.refusals["site-3"].startswith(f"site-3 refused bundle {bundle.id}: no reviewer of this site approved")
    assert result is not None and result.sites == ["site-1", "site-2"]
    assert list(result.table("count").columns) == ["site-1", "site-2", "pooled"]


def test_review_shows_what_leaves_and_the_site_thresholds(federation, tmp_path, caia):
    made, _, work = federation
    bundle = statistics_bundle(work / "explore.ipynb", output=tmp_path / "b")
    set_thresholds(made[1].site.path, min_count=25, extremes=False)
    code, out, err = caia("review", bundle.path, "--site", made[1].site.path, "-o", tmp_path / "r.html")
    assert code == 0, err
    assert out.splitlines()[2:4] == [
        "validation: passed", "site-2's statistics thresholds: --min-count 25 (no count between 0 and it leaves the site), "
        "--noise 0.1:0.3 (on min/max), --extremes none, --max-bins-percent 10 (a histogram needs fewer bins than this "
        "percent of its values)"]
    assert out.splitlines()[4].startswith("standing at site-2: ")  # approved or not, as the module's other tests left it
    page = (tmp_path / "r.html").read_text()
    assert "holds <strong>no code</strong>" in page
    assert "histogram of 2 bins over [5.0, 45.0)" in page and "histogram of 2 bins over a range agreed" in page
    assert "I, II, III, IV" in page and "fewer than 25 values, or with between 1 and 24 missing: none of its statistics" in page and "min/max: never sent" in page
    assert "between 0 and 25: suppressed, with enough other bins or categories" in page
    assert "a histogram is withheld unless it has fewer bins than 10% of the feature" in page
    assert "task result filters: <code>caia_jupyter.site.statistics.SiteStatisticsFilter" in page and "⚠" not in page  # caia's own filter
    assert "caia&#39;s statistics generator" in page or "statistics generator" in page


def test_site_policy_sets_thresholds(tmp_path, caia):
    site_dirs.init(tmp_path / "s", "site-9")
    code, out, _ = caia("site", "policy", tmp_path / "s", "--min-count", "15", "--noise", "0.2:0.4", "--json")
    assert code == 0 and json.loads(out)["statistics"]["min_count"] == 15
    assert read_thresholds(tmp_path / "s").max_noise_level == 0.4
    code, _, err = caia("site", "policy", tmp_path / "s", "--min-count", "0", "--sandbox", "off")
    assert code == 2 and "min_count must be a whole number of at least 1" in err and err.count("\n") == 1
    code, out, _ = caia("site", "policy", tmp_path / "s")  # printed in the words of the options that set them
    assert "statistics thresholds: --min-count 15 (no count between 0 and it leaves the site), --noise 0.2:0.4 " \
           "(on min/max), --extremes noisy, --max-bins-percent 10 (" in out
    code, out, _ = caia("site", "show", tmp_path / "s", "--json")
    shown = json.loads(out)
    assert shown["statistics"]["min_count"] == 15 and shown["policy"].get("sandbox") != "off"  # nothing half-written


@pytest.mark.slow
def test_caia_explore_json(federation, tmp_path, caia, monkeypatch):
    made, frames, work = federation
    approve_all(made, statistics_bundle(work / "explore.ipynb"))
    monkeypatch.chdir(tmp_path)
    code, out, err = caia("explore", work / "explore.ipynb", "--sites", *[d.site.path for d in made], "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["sites"] == ["site-1", "site-2", "site-3"] and (tmp_path / "runs").is_dir()
    counts = {(r["feature"]): r for r in data["tables"]["count"]}
    assert counts["stage=IV"]["site-1"] == SUPPRESSED and counts["mean radius"]["pooled"] == sum(map(len, frames.values()))
    assert "3" not in json.dumps(counts["stage=IV"]["site-1"])


@pytest.mark.slow
def test_the_magic_runs_the_notebooks_request_and_returns_the_result(federation, shell, monkeypatch):
    made, frames, work = federation
    approve_all(made, statistics_bundle(work / "explore.ipynb"))
    shell.user_ns["__session__"] = str(work / "explore.ipynb")
    sites = " ".join(f"'{d.site.path}'" for d in made)
    result = shell.run_line_magic("federated", "explore " + " ".join(f"'{t}'" for t in REQUEST) + f" --sites {sites}")
    assert isinstance(result, Result) and result.table("count").loc[("breast_cancer", "stage=IV"), "site-1"] == SUPPRESSED


def test_caia_validate_checks_the_samples_against_the_request(federation, tmp_path, caia):
    made, _, work = federation
    folder = tmp_path / "work"
    folder.mkdir()
    pd.read_csv(work / "sample.csv").to_csv(folder / "sample.csv", index=False)
    nbformat.write(nbformat.read(work / "explore.ipynb", as_version=4), folder / "explore.ipynb")
    bundle = statistics_bundle(folder / "explore.ipynb")
    code, out, _ = caia("validate", bundle.path)
    assert code == 0 and out.startswith("validation passed: the samples satisfy the statistics request")
    pd.read_csv(folder / "sample.csv").drop(columns=["mean area"]).to_csv(folder / "sample.csv", index=False)
    code, out, _ = caia("validate", bundle.path)
    assert code == 1 and out.startswith("validation FAILED: sample of 'breast_cancer': missing column 'mean area'")
    with pytest.raises(Exception, match="not validated|failed validation"):
        signing.approve(made[0].site, bundle.id, {"breast_cancer": "breast_cancer"}, made[0].reviewer_key, bundle=bundle)


def test_nvflares_cleansers_apply_the_site_thresholds():
    from nvflare.app_common.abstract.statistics_spec import Bin, Histogram, HistogramType

    def stats():
        return {"count": {"d": {"rare": 5, "common": 40}}, "failure_count": {"d": {"rare": 0, "common": 20}},
                "sum": {"d": {"rare": 5.0, "common": 80.0}}, "min": {"d": {"rare": 1.0, "common": 2.0}},
                "max": {"d": {"rare": 1.0, "common": 9.0}},
                "histogram": {"d": {"common": Histogram(HistogramType.STANDARD,
                                                         [Bin(i, i + 1, n) for i, n in enumerate([10, 10, 10, 10, 0, 0])])}}}

    spec = StatisticsSpec(columns=["rare", "common"], statistics=["count", "failure_count", "mean", "histogram"],
                          histograms={"common": {"bins": 6}})
    cleaned, _ = _Cleansers(Thresholds(min_count=10, max_bins_percent=10), spec, "seed").apply(stats(), "site-1")
    assert "rare" not in cleaned["count"]["d"] and "rare" not in cleaned["sum"]["d"] and "rare" not in cleaned["min"]["d"]
    assert cleaned["count"]["d"]["common"] == 40 and cleaned["failure_count"]["d"]["common"] == 20  # 40 values count
    assert "common" not in cleaned["histogram"]["d"]  # 6 bins >= 10% of 40 values
    assert cleaned["min"]["d"]["common"] < 2.0 < 9.0 < cleaned["max"]["d"]["common"]  # NVFLARE's noise on extremes
    # a site that sends no extremes agrees no range: only a histogram over a range the request fixes leaves
    no_extremes = Thresholds(min_count=10, max_bins_percent=20, extremes=False)
    cleaned, _ = _Cleansers(no_extremes, spec, "seed").apply(stats(), "site-1")
    assert cleaned["histogram"]["d"] == {} and cleaned["min"] == {"d": {}} and cleaned["max"] == {"d": {}}
    fixed = spec.model_copy(update={"histograms": {"common": HistogramSpec(bins=6, range=[0, 6])}})
    cleaned, _ = _Cleansers(no_extremes, fixed, "seed").apply(stats(), "site-1")
    assert [b.sample_count for b in cleaned["histogram"]["d"]["common"].bins] == [10, 10, 10, 10, 0, 0]


def test_the_reviewers_workbench_reads_a_statistics_bundle_and_never_diffs_code_against_it(federation, tmp_path):
    from caia_jupyter.reviewer import capabilities, changes, store, workbench
    from conftest import approve, build_validated, make_site

    made, _, work = federation
    statistics = statistics_bundle(work / "explore.ipynb", output=tmp_path / "b")
    assert capabilities.report(statistics).findings == []
    view = workbench.view(statistics.path, workbench.signer("", "", tmp_path, "configure it"))
    assert view["bundle_id"] == statistics.id and view["capabilities"]["findings"] == [] and view["changes"] is None
    site = make_site(tmp_path, "site-a")
    store.keep(site, statistics)
    approve(site, statistics.id, {})
    assert changes.compare(statistics, site) is None
    training = build_validated(tmp_path / "training")
    assert changes.compare(training, site) is None  # the stored statistics bundle is no base for code


# What leaves a site, unit by unit: the site's filter (`_Cleansers`: restrict, withhold, NVFLARE's
# cleansers) over statistics as NVFLARE's executor hands them to it.

SPEC = StatisticsSpec(columns=["age", "size"], statistics=["count", "failure_count", "mean", "stddev", "histogram", "quantile"],
                      histograms={"age": {"bins": 2, "range": [0, 100]}}, quantiles=[0.05, 0.5],
                      categories={"stage": ["I", "II"]})


def released(statistics: dict, **thresholds) -> dict:
    """What `_Cleansers` lets out of `statistics` under SPEC and the thresholds (default min_count 10)."""
    return _Cleansers(Thresholds(**{"min_count": 10, "max_bins_percent": 100, **thresholds}), SPEC, "seed").apply(statistics, "site-1")[0]


def site_answer(frame: pd.DataFrame, spec: StatisticsSpec = SPEC, histogram_range=(0, 100), quantiles=(0.05, 0.5)) -> dict:
    """The first and second round's statistics CaiaStatistics gives for `frame` (as NVFLARE's executor
    asks them), in one dict."""
    from caia_jupyter.site.statistics import CaiaStatistics

    generator = CaiaStatistics()
    generator.data = {"d": described(frame, spec)}
    features = list(generator.data["d"].columns)

    def each(fn):
        return {"d": {f: fn(f) for f in features}}

    return {"count": each(lambda f: generator.count("d", f)), "failure_count": each(lambda f: generator.failure_count("d", f)),
            "sum": each(lambda f: generator.sum("d", f)), "mean": each(lambda f: generator.sum("d", f) / max(generator.count("d", f), 1)),
            "min": each(lambda f: generator.min_value("d", f)), "max": each(lambda f: generator.max_value("d", f)),
            "histogram": {"d": {f: generator.histogram("d", f, 2, *histogram_range) for f in spec.histograms}},
            "quantile": {"d": {f: generator.quantiles("d", f, list(quantiles)) for f in spec.columns}}}


def in_two_rounds(cleansers: _Cleansers, answer: dict) -> dict:
    """What one job's site filter (`cleansers`) lets out of `answer` (`site_answer`) as NVFLARE's
    executor hands it over: the first round's statistics, then the second's (the histograms, with
    the counts NVFLARE always adds), whose ranges the first round's extremes bound."""
    second = {"histogram": answer.pop("histogram"), "count": json.loads(json.dumps(answer["count"])),
              "failure_count": json.loads(json.dumps(answer["failure_count"]))}
    out = cleansers.apply(answer, "site-1")[0]
    out["histogram"] = cleansers.apply(second, "site-1")[0]["histogram"]
    return out


def patients(n=100, stage_iv=0, stage_missing=0, size_missing=0, old=0) -> pd.DataFrame:
    """n synthetic patients: stage I/II in turn (then `stage_iv` of stage IV and `stage_missing` missing
    at the start), `size_missing` sizes missing, `old` ages of 97 (the rest 30..79)."""
    rng = np.random.default_rng(0)
    stage = pd.Series([["I", "II"][i % 2] for i in range(n)], dtype="string")
    stage[:stage_iv] = "IV"
    stage[stage_iv:stage_iv + stage_missing] = pd.NA
    age = rng.integers(30, 80, n).astype(float)
    age[:old] = 97.0
    size = rng.normal(20, 4, n)
    size[n - size_missing:] = np.nan
    return pd.DataFrame({"age": age, "size": size, "stage": stage})


def test_a_missing_count_below_the_minimum_withholds_every_statistic_of_the_column():
    out = released(site_answer(patients(size_missing=4)))
    for statistic in ("count", "failure_count", "mean", "sum", "quantile"):
        assert "size" not in out[statistic]["d"], statistic  # N - count would reveal the 4
        assert "age" in out[statistic]["d"], statistic
    spec = StatisticsSpec(columns=["age", "size"], statistics=["count"])  # missing counts not asked: still read
    out = _Cleansers(Thresholds(), spec, "seed").apply(site_answer(patients(size_missing=4), spec), "s")[0]
    assert "size" not in out["count"]["d"] and out["count"]["d"]["age"] == 100 and out["failure_count"] == {"d": {}}
    out = released(site_answer(patients(size_missing=12)))
    assert out["count"]["d"]["size"] == 88 and out["failure_count"]["d"]["size"] == 12


def stage_counts(frame: pd.DataFrame, categories: list[str]) -> dict:
    """The stage counts a site releases for `frame` with the spec's `categories`, min_count 10."""
    spec = StatisticsSpec(columns=["age"], statistics=["count"], categories={"stage": categories})
    out = _Cleansers(Thresholds(min_count=10, max_bins_percent=100), spec, "seed").apply(site_answer(frame, spec), "s")[0]
    stages = {f for by_ds in out.values() for f in by_ds["d"] if f.startswith("stage=")}
    assert stages <= set(out["count"]["d"]) and not any(f.startswith("stage=") for f in out["failure_count"]["d"])
    return {f: out["count"]["d"][f] for f in stages}


def test_a_rare_category_and_a_complementary_one_are_suppressed_so_neither_is_derived():
    # 100 patients: 3 of stage IV, then I and II in turn (48 and 49); the total (100) is released
    assert stage_counts(patients(stage_iv=3), ["I", "II", "IV"]) == {"stage=II": 49}  # IV, and I the smallest other
    assert stage_counts(patients(stage_iv=3), ["I", "II"]) == {"stage=II": 49}  # the 3 are the remainder: I goes with it
    assert stage_counts(patients(stage_missing=4), ["I", "II"]) == {"stage=II": 48}  # a missing stage is the remainder
    assert stage_counts(patients(stage_iv=20), ["I", "II", "IV"]) == {"stage=I": 40, "stage=II": 40, "stage=IV": 20}
    assert stage_counts(patients(stage_iv=20), ["I", "II", "III"]) == {"stage=I": 40, "stage=II": 40, "stage=III": 0}
    # before this rule, a small category withheld every category of its column
    assert stage_counts(patients(stage_iv=3, n=60), ["I", "II", "IV"]) == {"stage=II": 29}


def test_complementary_suppression_hides_enough_cells_that_none_is_derived():
    assert complementary([0, 30, 60], 0, 10) == set()  # zeros are released
    assert complementary([3, 11, 20, 25, 20, 11, 10, 0], 0, 10) == {0, 6}  # the 3, and the smallest other
    assert complementary([3, 11, 20, 25, 20, 11, 0], 0, 10) == {0, 1}  # a tie: the nearest
    assert complementary([3, 4, 20, 25], 0, 10) == {0, 1, 2}  # 3 + 4 < 10
    assert complementary([30, 40, 26], 4, 10) == {2}  # 4 out of range: the smallest bin hides with them
    assert complementary([3, 40], 57, 10) == {0}  # the remainder (57, never sent) already hides the 3
    assert complementary([3, 0], 0, 10) is None  # nothing can hide it: withheld whole


def test_a_histogram_with_one_small_tail_bin_releases_all_but_two_bins_and_neither_is_derived():
    from nvflare.app_common.abstract.statistics_spec import Bin, Histogram, HistogramType

    spec = StatisticsSpec(columns=["age"], statistics=["count", "histogram"], histograms={"age": {"bins": 8, "range": [0, 100]}})

    def age_histogram(*sizes):  # 100 ages in the spec's 8 bins over [0, 100)
        answer = site_answer(patients(), spec)
        answer["histogram"]["d"]["age"] = Histogram(HistogramType.STANDARD, [Bin(i * 12.5, (i + 1) * 12.5, n) for i, n in enumerate(sizes)])
        out = _Cleansers(Thresholds(min_count=10, max_bins_percent=100), spec, "seed").apply(answer, "site-1")[0]
        return out["count"]["d"]["age"], out["histogram"]["d"].get("age")

    count, histogram = age_histogram(0, 4, 12, 20, 25, 17, 12, 10)  # a tail bin of 4
    sent = [b.sample_count for b in histogram.bins]
    hidden = [i for i, n in enumerate(sent) if n != n]  # NaN: suppressed
    assert hidden == [1, 7] and [n for n in sent if n == n] == [0, 12, 20, 25, 17, 12]  # the 4 and the 10
    assert count - sum(n for n in sent if n == n) == 14  # all the count and the released bins tell: 4 + 10, either unknown
    assert age_histogram(0, 12, 20, 25, 21, 12, 10, 0)[1].bins[6].sample_count == 10  # nothing small: all released
    count, histogram = age_histogram(0, 12, 20, 25, 17, 12, 10, 1)  # 3 out of range: the 1, the remainder, the 10
    assert [i for i, b in enumerate(histogram.bins) if b.sample_count != b.sample_count] == [6, 7]


def test_a_histogram_with_a_small_bin_or_remainder_suppresses_bins_not_the_histogram(tmp_path):
    from nvflare.app_common.abstract.statistics_spec import Bin, Histogram, HistogramType

    def age_histogram(first, second):  # 100 ages, the spec's 2 bins over [0, 100)
        answer = site_answer(patients())
        answer["histogram"]["d"]["age"] = Histogram(HistogramType.STANDARD, [Bin(0, 50, first), Bin(50, 100, second)])
        return released(answer)["histogram"]["d"]

    nan = lambda histogram: [b.sample_count != b.sample_count for b in histogram.bins]  # noqa: E731
    assert nan(age_histogram(95, 5)["age"]) == [True, True]  # a bin of 5: the other would give it away
    assert nan(age_histogram(50, 46)["age"]) == [False, True]  # 4 values out of range: hidden with the 46
    assert [b.sample_count for b in age_histogram(60, 40)["age"].bins] == [60, 40]
    assert [b.sample_count for b in age_histogram(100, 0)["age"].bins] == [100, 0]
    narrow = site_answer(patients(old=3), histogram_range=(90, 99))
    assert "age" not in released(narrow)["histogram"]["d"]  # another range than the spec's: not asked
    spec = StatisticsSpec(columns=["age", "size"], statistics=["count", "histogram"], histograms={"age": {"bins": 2}})

    def agreed(frame, histogram_range):  # a range the server chose, after the site sent its noisy extremes (30..97 ages),
        taken = taken_ranges(tmp_path / f"{histogram_range}.json", "sha256:x")  # in the first run of a request
        return in_two_rounds(_Cleansers(Thresholds(max_bins_percent=100), spec, "seed", taken), site_answer(frame, spec, histogram_range))

    assert agreed(patients(old=3), (90, 99))["histogram"]["d"] == {}  # it does not hold them: it isolates the tail
    assert agreed(patients(old=3), (0, 200))["histogram"]["d"] == {}  # a zero bin hides, and nothing can hide with it
    fine = agreed(patients(old=3), (0, 140))["histogram"]["d"]["age"]  # it holds them, no bin is small
    assert not any(nan(fine)) and sum(b.sample_count for b in fine.bins) == 100


def test_nvflare_pools_a_suppressed_bin_into_a_partial_one():
    """NVFLARE's own pooling (`accumulate_hists`, its controller's) of two sites' histograms, one with
    a suppressed bin, read as the Result."""
    from nvflare.app_common.abstract.statistics_spec import Bin, Histogram, HistogramType
    from nvflare.app_common.statistics.numeric_stats import accumulate_hists

    from caia_jupyter.site.statistics import SUPPRESSED_BIN

    sites = {"a": [Bin(0, 50, SUPPRESSED_BIN), Bin(50, 100, SUPPRESSED_BIN), Bin(100, 150, 60)],
             "b": [Bin(0, 50, 20), Bin(50, 100, 12), Bin(100, 150, 30)]}
    pooled = {}
    for bins in sites.values():
        pooled = accumulate_hists({"d": {"x": Histogram(HistogramType.STANDARD, bins)}}, pooled)
    raw = {"x": {"histogram": {**{s: {"d": [list(b) for b in bins]} for s, bins in sites.items()},
                               "Global": {"d": [list(b) for b in pooled["d"]["x"].bins]}}}}
    raw = json.loads(json.dumps(raw))  # as NVFLARE's writer and Result.read carry it: NaN
    result = Result(raw, {"columns": ["x"], "statistics": ["count", "histogram"], "histograms": {"x": {"bins": 3}}}, ["a", "b"], ["d"])
    frame = result.histogram("x")
    assert frame["a"].tolist() == [SUPPRESSED, SUPPRESSED, 60] and frame["b"].tolist() == [20, 12, 30]
    assert frame["pooled"].tolist() == [PARTIAL, PARTIAL, 90]
    assert {"site": "a", "dataset": "d", "feature": "x", "statistic": "histogram", "bins": [0, 1]} in result.suppressed()
    assert "NaN" not in json.dumps(result.to_json(), allow_nan=False)
    assert result.plot_histograms().axes


def test_quantiles_send_no_raw_extreme_and_no_centroid_of_fewer_than_the_minimum():
    frame = patients(old=1)
    out = released(site_answer(frame))
    answer = out["quantile"]["d"]["age"]
    assert list(answer["quantile"]) == [0.5]  # 0.05 x 100 < 10: withheld
    digest = answer["digest_coord"]
    assert all(c["c"] >= 10 for c in digest["centroids"]) and digest["min"] > 30 and digest["max"] < 97
    assert (digest["min"], digest["max"]) == (digest["centroids"][0]["m"], digest["centroids"][-1]["m"])
    assert sum(c["c"] for c in digest["centroids"]) == 100
    assert abs(sum(c["m"] * c["c"] for c in digest["centroids"]) - frame["age"].sum()) < 1e-6
    from fastdigest import TDigest
    assert 30 < TDigest.from_dict(digest).quantile(0.5) < 80  # NVFLARE's controller can still merge it
    assert coarse({"centroids": [{"m": 1.0, "c": 1.0}, {"m": 2.0, "c": 12.0}, {"m": 9.0, "c": 3.0}]}, 10)["centroids"] \
        == [{"m": (1 + 24 + 27) / 16, "c": 16.0}]


def test_a_site_releases_only_what_the_approved_spec_names():
    answer = site_answer(patients(stage_iv=20))
    answer["var"] = {"d": {"age": 1.0}}
    answer["histogram"]["d"]["size"] = answer["histogram"]["d"]["age"]  # a histogram the spec does not ask
    answer["quantile"]["d"]["age"]["quantile"][0.9] = 70.0  # a quantile it does not ask
    spec = StatisticsSpec(columns=["age", "size"], statistics=["count", "histogram", "quantile"], quantiles=[0.5],
                          histograms={"age": {"bins": 3}}, categories={"stage": ["I", "II", "IV"]})
    restrict(answer, spec, {})
    assert answer["sum"] == answer["mean"] == answer["var"] == answer["failure_count"] == {"d": {}}
    assert answer["histogram"]["d"] == {}  # 2 bins where the spec asks 3; size not asked
    assert list(answer["quantile"]["d"]["age"]["quantile"]) == [0.5]
    assert set(answer["min"]["d"]) == {"age", "size"}  # the histogram's range rests on them
    assert not any(f.startswith("stage=") for f in answer["min"]["d"])


def test_a_spec_range_makes_histograms_work_without_extremes():
    out = released(site_answer(patients()), extremes=False)
    assert out["min"]["d"] == {"age": 0.0} and out["max"]["d"] == {"age": 100.0}  # the spec's range, not data
    out = released(site_answer(patients()))
    assert (out["min"]["d"]["age"], out["max"]["d"]["age"]) == (0.0, 100.0) and out["min"]["d"]["size"] != 0.0


def test_a_pooled_value_some_site_withheld_reads_partial():
    raw = {"x": {"count": {"a": {"d": 50}, "b": {"d": 40}, "Global": {"d": 90}},
                 "failure_count": {"a": {"d": 0}, "Global": {"d": 0}}}}
    result = Result(raw, {"columns": ["x"], "statistics": ["count", "failure_count"]}, ["a", "b"], ["d"])
    assert result.table("count").loc[("d", "x"), "pooled"] == 90
    missing = result.table("failure_count").loc[("d", "x")]
    assert (missing["a"], missing["b"], missing["pooled"]) == (0, SUPPRESSED, PARTIAL)
    raw["x"]["failure_count"] = {"a": {}}  # every site withheld it: nothing pooled
    assert result.table("failure_count").loc[("d", "x"), "pooled"] == SUPPRESSED
    assert result.plot_missing().axes


def test_caia_explore_text_says_what_suppressed_means_and_names_a_histogram_every_site_withheld():
    from caia_jupyter.cli import exploration_text

    raw = {"x": {"count": {"a": {"d": 50}, "Global": {"d": 50}}, "failure_count": {"a": {"d": 0}, "Global": {"d": 0}},
                 "histogram": {"a": {"d": [[0, 5, 20], [5, 10, 30]]}, "Global": {"d": [[0, 5, 20], [5, 10, 30]]}}},
           "y": {"count": {"a": {}}, "failure_count": {"a": {}}}}
    spec = {"columns": ["x", "y"], "statistics": ["count", "failure_count", "histogram"],
            "histograms": {"x": {"bins": 2}, "y": {"bins": 4, "range": [0, 8]}}}
    text = exploration_text(Result(raw, spec, ["a"], ["d"], "sha256:" + "ab" * 32), "runs/r")
    assert text.splitlines()[0] == "statistics of bundle abababababab from a (run runs/r)"
    assert "\nfailure_count (values missing)\n" in text and "Empty DataFrame" not in text
    assert "histogram of y\n  suppressed at every site\n" in text
    assert "suppressed at the sites: 3 statistics, each under its site's thresholds (a column with fewer values than " \
           "the site's minimum count, or with fewer missing values but some, is withheld whole;" in text


def test_a_poc_statistics_runs_outcome_from_the_servers_job_meta(tmp_path):
    """remote.statistics_outcome on a fake job meta (as NVFLARE's get_job_meta answers) and a fake
    downloaded result: finished only once the server's statistics.json was collected."""
    from caia_jupyter.targets import remote

    spec = {"job_id": "j1", "sites": ["site-1", "site-2", "site-3"], "min_clients": 3, "statistics": True}
    deployed = ["site-1: OK", "site-2: OK", "site-3: NVFLARE_ERROR: site-3 refused the job: no approval"]
    meta = {"status": "FINISHED:COMPLETED", "job_deploy_detail": deployed[:2] + ["site-3: OK"]}
    assert remote.outcome(meta, tmp_path, spec, False)["status"] == "failed"  # nothing collected yet
    fake_result = tmp_path / "result" / "j1" / "workspace"
    fake_result.mkdir(parents=True)
    (fake_result / "statistics.json").write_text('{"age": {}}')
    remote.collect(tmp_path / "result", tmp_path, spec["sites"], statistics=True)
    finished = remote.outcome(meta, tmp_path, spec, False)
    assert finished["status"] == "finished" and finished["completed_sites"] == spec["sites"]
    refused = remote.outcome({"status": "FINISHED:FAILED_TO_RUN", "job_deploy_detail": deployed}, tmp_path, spec, False)
    assert refused["status"] == "refused" and "refused: site-3" in refused["message"]


def test_caia_explore_on_a_poc_that_is_none_is_one_line(federation, tmp_path, caia):
    _, _, work = federation
    code, _, err = caia("explore", work / "explore.ipynb", "--target", "poc", "--poc-workspace", tmp_path / "nopoc")
    assert code == 2 and "is not a caia POC workspace" in err and err.count("\n") == 1


def test_noise_on_extremes_is_the_same_for_a_value_in_every_run_and_bundle_and_keyed_by_the_sites_secret(tmp_path):
    import random
    import stat

    from caia_jupyter.site.statistics import NOISE_KEY_FILE, noise_seed

    (tmp_path / "a").mkdir()
    seed = noise_seed(tmp_path / "a")
    assert seed == noise_seed(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / NOISE_KEY_FILE).stat().st_mode) == 0o600
    (tmp_path / "b").mkdir()
    assert noise_seed(tmp_path / "b") != seed  # another site, another key
    (tmp_path / "b" / NOISE_KEY_FILE).write_bytes(b"short")
    with pytest.raises(Exception, match="statistics.key of the site is not a key of 32 bytes; remove it"):
        noise_seed(tmp_path / "b")

    def extremes(low, high, feature="age", noise_seed=seed):  # what a site sends for an agreed histogram range
        spec = StatisticsSpec(columns=[feature], statistics=["count", "histogram"], histograms={feature: {"bins": 2}})
        answer = {"count": {"d": {feature: 100}}, "failure_count": {"d": {feature: 0}},
                  "min": {"d": {feature: low}}, "max": {"d": {feature: high}}}
        out = _Cleansers(Thresholds(), spec, noise_seed).apply(answer, "s")[0]
        return out["min"]["d"][feature], out["max"]["d"][feature]

    state = random.getstate()
    assert extremes(30.0, 97.0) == extremes(30.0, 97.0)  # another run: the same noisy values, nothing to average
    assert extremes(30.0, 97.0)[1] == extremes(31.0, 97.0, "size")[1]  # the same value in another request: the same
    assert extremes(30.0, 97.0)[1] != extremes(30.0, 96.0)[1] != extremes(30.0, 97.0, noise_seed=noise_seed(tmp_path / "a") + "x")[1]
    assert random.getstate() == state  # the process's own random numbers go on as they were
    low, high = extremes(30.0, 97.0)
    assert 30 * 0.7 <= low <= 30 * 0.9 and 97 * 1.1 <= high <= 97 * 1.3  # NVFLARE's noise, 10% to 30%
