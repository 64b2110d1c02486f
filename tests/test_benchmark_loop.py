"""benchmarks/loop.py edits the example notebook into a new bundle id each loop, and runs end to end."""

import json
import subprocess
import sys

import pytest

from caia_jupyter.researcher import compose
from conftest import REPO, load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("loop")


def test_each_edit_is_a_new_bundle_id_differing_only_in_the_learning_rate(bench, tmp_path):
    notebook = bench.copy_example(tmp_path)
    ids, params = set(), []
    for loop in (1, 2):
        notebook.write_text(bench.edit(bench.NOTEBOOK.read_text(), loop))
        built = compose.build(notebook)
        ids.add(built.id)
        params.append(built.manifest["job"]["params"])
    assert len(ids) == 2 and params == [{"epochs": 5, "lr": 0.051}, {"epochs": 5, "lr": 0.052}]


def test_a_notebook_that_no_longer_holds_the_learning_rate_is_named(bench):
    with pytest.raises(SystemExit, match="no longer holds 'param.lr=0.05'"):
        bench.edit('{"cells": []}', 1)


@pytest.mark.slow
def test_the_benchmark_runs_and_reports_every_step_in_order(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loop.py"), "--repeats", "1", "--loops", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert set(result["cli"]) == {"baseline", "bundle_first", "bundle_rebuild", "verify"}
    assert all(seconds > 0 for seconds in result["cli"].values())
    for marks in (result["loop"]["cold"], result["loop"]["median"]):
        steps = [marks[step] for step in ("build", "validate", "approve", "submit", "first_metric")]
        assert steps == sorted(steps) and steps[0] > 0
    assert "| bundle_rebuild |" in done.stdout and "| warm (median) |" in done.stdout
