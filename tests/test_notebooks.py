"""The quickstart and the workshop notebooks, end to end under papermill (real kernel, simulator)."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from caia_jupyter.researcher.explore import SUPPRESSED, Result
from conftest import REPO

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts"


def execute(notebook: Path, folder: Path) -> nbformat.NotebookNode:
    ARTIFACTS.mkdir(exist_ok=True)
    output = ARTIFACTS / f"{notebook.stem}.executed.ipynb"
    papermill.execute_notebook(str(notebook), str(output), cwd=str(folder), kernel_name="python3",
                               progress_bar=False, execution_timeout=600)
    executed = nbformat.read(output, as_version=4)
    nbformat.validate(executed)
    return executed


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_the_quickstart_notebook_trains_across_three_simulated_sites(tmp_path):
    shutil.copy(REPO / "example_notebooks" / "01_breast_cancer.ipynb", tmp_path)
    shutil.copytree(REPO / "example_notebooks" / "samples", tmp_path / "samples")
    executed = execute(tmp_path / "01_breast_cancer.ipynb", tmp_path)
    text = text_of(executed)
    assert "validation passed" in text
    assert "final model" in text and "finished (5 rounds with site-1, site-2, site-3)" in text
    assert "'0.weight': (16, 30)" in text
    runs = [json.loads((d / "run.json").read_text()) for d in (tmp_path / "runs").iterdir()]
    assert sorted(bool(r.get("statistics")) for r in runs) == [False, True]  # one exploration, then one training run
    # "Know the data first": the sites' statistics as tables and plots, before training
    exploration = [c for c in executed.cells if c.get("id", "").startswith("explore-")]
    images = [o for c in exploration for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    rows = [len(pd.read_csv(tmp_path / "sites" / f"site-{i}" / "data" / "breast_cancer.csv")) for i in (1, 2, 3)]
    counts = " +".join(str(n) for n in [*rows, sum(rows)])  # the count table: site-1, site-2, site-3, pooled
    shown = text_of(nbformat.v4.new_notebook(cells=exploration))
    assert re.search(rf"breast_cancer mean radius +{counts}\n", shown), shown
    # each center shows most bins of each histogram: only its small ones, and as few others as hide them, are suppressed
    explored = next(d for d in (tmp_path / "runs").iterdir() if json.loads((d / "run.json").read_text()).get("statistics"))
    result = Result.read(explored)
    for column in result.spec["histograms"]:
        bins = result.histogram(column)
        assert all((bins[site] != SUPPRESSED).sum() >= 5 for site in result.sites), bins


def test_the_workshop_notebook_shows_a_refusal_then_a_full_run(tmp_path):
    shutil.copy(REPO / "binder" / "workshop.ipynb", tmp_path)
    text = text_of(execute(tmp_path / "workshop.ipynb", tmp_path))
    assert "site-3: refused: site-3 refused bundle sha256:" in text
    assert "finished (3 rounds with site-1, site-2; without site-3, which refused the bundle (min_clients 2))" in text
    assert "finished (3 rounds with site-1, site-2, site-3)" in text


def test_the_dp_example_notebook_trains_within_its_privacy_budget(tmp_path):
    shutil.copy(REPO / "example_notebooks" / "02_breast_cancer_dp.ipynb", tmp_path)
    shutil.copytree(REPO / "example_notebooks" / "samples", tmp_path / "samples")
    executed = execute(tmp_path / "02_breast_cancer_dp.ipynb", tmp_path)
    text = text_of(executed)
    assert "validation passed" in text
    assert "finished (5 rounds with site-1, site-2, site-3)" in text
    from caia_jupyter.researcher.runs import Run

    run = Run(next((tmp_path / "runs").iterdir()))
    spent = run.table("epsilon")
    assert list(spent.columns) == ["site-1", "site-2", "site-3"] and list(spent.index) == list(range(5))
    assert (spent.diff().iloc[1:] > 0).all().all() and (spent <= 3).all().all() and (spent.iloc[-1] > 1.5).all()
    assert run.final_metrics()["global"]["accuracy"] > 0.8
