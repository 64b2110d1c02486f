"""GET /caia/api/explore, in-process (pytest-jupyter's jp_fetch): the notebook's last exploration, read
from run folders that are untrusted input. The run folders here are written by hand (a fake of what
the simulator leaves: run.json and NVFLARE's statistics.json); tests/test_data_ui.py reads a real one."""

import json
import os

import nbformat
import pandas as pd
import pytest
from tornado.httpclient import HTTPClientError

from caia_jupyter.researcher.explore import PARTIAL, SUPPRESSED, statistics_bundle
from test_server import get, server_config

REQUEST = "%federated explore dataset=breast_cancer:sample.csv 'columns=mean radius' 'histograms=mean radius:2:0:30'"


@pytest.fixture
def jp_server_config():
    return server_config()


@pytest.fixture
def study(jp_root_dir):
    """A notebook folder with a sample, the request, and its statistics bundle built."""
    folder = jp_root_dir / "study"
    folder.mkdir()
    pd.DataFrame({"mean radius": [10.0 + i for i in range(12)]}).to_csv(folder / "sample.csv", index=False)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(REQUEST)]), folder / "explore.ipynb")
    return folder, statistics_bundle(folder / "explore.ipynb")


def fake_statistics(pooled_count: int) -> dict:
    """NVFLARE's statistics.json shape: feature -> statistic -> site or "Global" -> dataset -> value;
    site-2 withheld its mean (its thresholds)."""
    def by(site_1, site_2, pooled):
        return {"site-1": {"breast_cancer": site_1}, **({"site-2": {"breast_cancer": site_2}} if site_2 is not None else {}),
                "Global": {"breast_cancer": pooled}}

    return {"mean radius": {
        "count": by(40, pooled_count - 40, pooled_count), "failure_count": by(0, 2, 2),
        "mean": by(14.0, None, 14.5), "stddev": by(3.0, 3.5, 3.2),
        "histogram": by([[0, 15, 30], [15, 30, 10]], [[0, 15, 20], [15, 30, pooled_count - 60]],
                        [[0, 15, 50], [15, 30, pooled_count - 50]])}}


def fake_run(folder, bundle, name: str, statistics: dict | str | None, run_json: dict | None = None) -> None:
    run = folder / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"target": "simulator", "bundle_id": bundle.id, "statistics": True,
                                              "bundle": str(bundle.path.resolve()), **(run_json or {})}))
    if statistics is not None:
        (run / "statistics.json").write_text(statistics if isinstance(statistics, str) else json.dumps(statistics))


async def test_no_exploration_yet(jp_fetch, study):
    assert await get(jp_fetch, "explore", path="study/explore.ipynb") == {"exploration": None}


async def test_the_newest_readable_run_of_the_notebooks_statistics_bundle(jp_fetch, study):
    folder, bundle = study
    fake_run(folder, bundle, "20260101T000000-older", fake_statistics(100))
    fake_run(folder, bundle, "20260102T000000-newer", fake_statistics(120))
    shown = await get(jp_fetch, "explore", path="study/explore.ipynb")
    assert shown["run"] == "study/runs/20260102T000000-newer" and shown["bundle_id"] == bundle.id
    assert shown["sites"] == ["site-1", "site-2"]
    count, mean = shown["tables"]["count"][0], shown["tables"]["mean"][0]
    assert (count["feature"], count["site-2"], count["pooled"]) == ("mean radius", 80, 120)
    assert (mean["site-1"], mean["site-2"], mean["pooled"]) == (14.0, SUPPRESSED, PARTIAL)  # pooled over site-1 only: partial
    assert shown["tables"]["failure_count"][0]["site-2"] == 2
    assert [row["pooled"] for row in shown["histograms"]["mean radius"]] == [50, 70]
    assert {"site": "site-2", "dataset": "breast_cancer", "feature": "mean radius", "statistic": "mean"} in shown["suppressed"]


async def test_crafted_run_folders_are_left_out(jp_fetch, study, tmp_path):
    folder, bundle = study
    fake_run(folder, bundle, "20260101T000000-good", fake_statistics(100))
    elsewhere = tmp_path / "other-bundle"
    elsewhere.mkdir()
    (elsewhere / "manifest.json").write_text((bundle.path / "manifest.json").read_text())
    crafted = [
        ("20260102T000000-not-json", "{", {}),
        ("20260103T000000-nan", json.dumps(fake_statistics(100)).replace("3.2", "NaN"), {}),
        ("20260104T000000-wrong-shape", json.dumps({"mean radius": [1, 2]}), {}),
        ("20260105T000000-other-bundle", fake_statistics(7), {"bundle": str(elsewhere)}),
        ("20260106T000000-other-id", fake_statistics(7), {"bundle_id": "sha256:" + "0" * 64}),
        ("20260107T000000-training", fake_statistics(7), {"statistics": None}),
        ("20260108T000000-no-result", None, {}),
        ("20260109T000000-bundle-not-a-string", fake_statistics(7), {"bundle": ["x"]}),
    ]
    for name, statistics, run_json in crafted:
        fake_run(folder, bundle, name, statistics, run_json)
    (folder / "runs" / "20260110T000000-not-an-object").mkdir()
    (folder / "runs" / "20260110T000000-not-an-object" / "run.json").write_text("[1]")
    fake_run(tmp_path, bundle, "outside-run", fake_statistics(7))  # tmp_path is outside the server's root
    os.symlink(tmp_path / "runs" / "outside-run", folder / "runs" / "20260111T000000-linked")
    shown = await get(jp_fetch, "explore", path="study/explore.ipynb")
    assert shown["run"] == "study/runs/20260101T000000-good" and shown["tables"]["count"][0]["pooled"] == 100


async def test_a_rebuilt_bundle_leaves_its_earlier_runs_out(jp_fetch, study):
    folder, bundle = study
    fake_run(folder, bundle, "20260101T000000-before", fake_statistics(100))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(REQUEST.replace(":2:", ":3:"))]),
                   folder / "explore.ipynb")
    statistics_bundle(folder / "explore.ipynb")  # another spec: the earlier numbers would be misread
    assert await get(jp_fetch, "explore", path="study/explore.ipynb") == {"exploration": None}


@pytest.mark.parametrize("path, code, said", [("../explore.ipynb", 403, "outside the server's root"),
                                              ("study/missing.ipynb", 400, "missing.ipynb is not a notebook file"),
                                              ("study/sample.csv", 400, "sample.csv is not a notebook file")])
async def test_anything_but_a_notebook_under_the_root_is_refused(jp_fetch, study, path, code, said):
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "explore", path=path)
    assert info.value.code == code and said in json.loads(info.value.response.body)["message"]


async def test_a_suppressed_bin_reads_suppressed_and_its_pooled_bin_partial(jp_fetch, study):
    folder, bundle = study
    statistics = fake_statistics(100)
    statistics["mean radius"]["histogram"]["site-2"]["breast_cancer"][0][2] = float("nan")  # as a site sends it
    statistics["mean radius"]["histogram"]["Global"]["breast_cancer"][0][2] = float("nan")  # as NVFLARE pools it
    fake_run(folder, bundle, "20260101T000000-suppressed-bin", json.dumps(statistics))
    shown = await get(jp_fetch, "explore", path="study/explore.ipynb")
    assert shown["run"] == "study/runs/20260101T000000-suppressed-bin"
    histogram = shown["histograms"]["mean radius"]
    assert [row["site-2"] for row in histogram] == [SUPPRESSED, 40] and [row["pooled"] for row in histogram] == [PARTIAL, 50]
