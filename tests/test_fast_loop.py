"""`caia bundle` and `caia verify` start fast because they import nothing heavy: no NVFLARE, torch,
papermill, nbformat or jsonschema (with its format checkers), and no pandas on a rebuild of an
unchanged sample. Checked as what a fresh interpreter has imported after the command, not as a time.
The notebook is still checked against nbformat's schema: bad notebooks get one-line errors."""

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caia_jupyter.contracts.errors import NotebookError
from caia_jupyter.researcher import compose

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_notebooks" / "01_breast_cancer.ipynb"
NEVER = ("torch", "nvflare", "papermill", "nbformat", "jsonschema", "rfc3987_syntax", "opacus", "sklearn")
COMMAND = """import json, sys
from caia_jupyter.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m)}))"""


def imported(folder: Path, *args) -> set[str]:
    """The top-level modules a fresh interpreter holds after `caia ARGS` in `folder` (which must succeed)."""
    done = subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], cwd=folder, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    return set(result["modules"])


@pytest.fixture
def example(tmp_path):
    shutil.copytree(EXAMPLE.parent / "samples", tmp_path / "samples")
    shutil.copyfile(EXAMPLE, tmp_path / EXAMPLE.name)
    return tmp_path / EXAMPLE.name


def test_bundle_and_verify_import_nothing_heavy_and_a_rebuild_no_pandas(example):
    first = imported(example.parent, "bundle", example.name)
    assert first.isdisjoint(NEVER) and "pandas" in first  # the sample's columns, as pandas types them
    example.write_text(example.read_text().replace("param.lr=0.05", "param.lr=0.06"))
    rebuild = imported(example.parent, "bundle", example.name)
    assert rebuild.isdisjoint(NEVER + ("pandas", "numpy", "pyarrow"))
    verify = imported(example.parent, "verify", "bundles/" + example.stem)
    assert verify.isdisjoint(NEVER + ("pandas", "numpy", "pyarrow", "IPython"))


def test_a_rebuild_reuses_the_columns_only_of_the_same_sample_bytes(example):
    first = compose.build(example)
    sample = example.parent / "samples" / "breast_cancer_sample.csv"
    record = first.record("build.json")
    assert record["sample_keys"]["breast_cancer"]["sha256"] == compose.hashlib.sha256(sample.read_bytes()).hexdigest()
    # a changed sample (a column renamed) is read again: the manifest names the new column
    sample.write_text(sample.read_text().replace("mean radius", "mean radius (mm)", 1))
    rebuilt = compose.build(example)
    names = [c["name"] for c in rebuilt.manifest["datasets"]["breast_cancer"]["columns"]]
    assert "mean radius (mm)" in names and "mean radius" not in names and rebuilt.id != first.id
    # an earlier record from another pandas is not trusted
    earlier = {**rebuilt.record("build.json")}
    earlier["sample_keys"] = {"breast_cancer": {**earlier["sample_keys"]["breast_cancer"], "pandas": "0.1"}}
    earlier["manifest"] = {**earlier["manifest"], "datasets": {"breast_cancer": {"columns": [{"name": "x", "kind": "int"}]}}}
    assert compose.compose(example, earlier=earlier).manifest == rebuilt.manifest


def test_requirements_find_the_distributions_as_importlib_does():
    everything = importlib.metadata.packages_distributions()
    assert compose.distributions_of(set(everything) | {"no_such_module"}) == everything


@pytest.mark.parametrize("text, message", [
    ('[1, 2]', "is not an nbformat 4 notebook (nbformat None)"),
    ('{"nbformat": 3, "nbformat_minor": 0, "worksheets": []}', "is not an nbformat 4 notebook (nbformat 3)"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, '
     '"outputs": [], "execution_count": null}]}', "is not a valid notebook: data.cells[0] must"),
    ('{"nbformat": 4, "nbformat_minor": [5], "metadata": {}, "cells": []}', "is not a valid notebook:"),
    ('{"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, '
     '"outputs": [], "execution_count": null, "source": "", "extra": 1}]}', "is not a valid notebook:"),
])
def test_a_notebook_nbformat_would_refuse_gets_one_line(tmp_path, text, message):
    path = tmp_path / "bad.ipynb"
    path.write_text(text)
    with pytest.raises(NotebookError) as error:
        compose.build(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "bundles").exists()
