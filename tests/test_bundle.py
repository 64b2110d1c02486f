import json

import jsonschema
import nbformat
import numpy as np
import pytest

import corpus

from caia_jupyter.contracts import manifest
from caia_jupyter.contracts.errors import NotebookError
from caia_jupyter.researcher import bundle, compose, freenames


def rebuild(path, out):
    return compose.build(path, out).id


def test_building_twice_gives_the_same_id_and_same_bytes(write_notebook, tmp_path):
    path = write_notebook("good")
    first = compose.build(path, tmp_path / "a")
    second = compose.build(path, tmp_path / "b")
    assert first.id == second.id and first.id.startswith("sha256:")
    for name in first.manifest["files"]:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()


def test_outputs_counts_and_metadata_do_not_change_the_id(write_notebook, tmp_path):
    path = write_notebook("good")
    before = rebuild(path, tmp_path / "b1")
    nb = nbformat.read(path, as_version=4)
    for n, cell in enumerate(nb.cells):
        cell.metadata["collapsed"] = True
        cell.metadata["execution"] = {"iopub.execute_input": f"2026-01-0{n % 9 + 1}T00:00:00Z"}
        if cell.cell_type == "code":
            cell.execution_count = 40 + n
            cell.outputs = [nbformat.v4.new_output("stream", text=f"run {n}\n")]
    nb.metadata["widgets"] = {"state": {"x": 1}}
    nbformat.write(nb, path)
    assert rebuild(path, tmp_path / "b2") == before


def test_one_character_in_a_federated_cell_changes_the_id(write_notebook, tmp_path):
    path = write_notebook("good")
    before = rebuild(path, tmp_path / "b1")
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "def build_model" in c.source)
    cell.source = cell.source.replace("manual_seed(0)", "manual_seed(1)")
    nbformat.write(nb, path)
    assert rebuild(path, tmp_path / "b2") != before


def test_changing_local_cells_and_markdown_keeps_the_id(write_notebook, tmp_path):
    path = write_notebook("good")
    before = rebuild(path, tmp_path / "b1")
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "print('different exploration')"
    nb.cells[0].source = "# A new title"
    nb.cells.insert(2, nbformat.v4.new_code_cell("y = 2"))
    nbformat.write(nb, path)
    assert rebuild(path, tmp_path / "b2") == before


def test_settings_are_part_of_what_runs(write_notebook, tmp_path):
    path = write_notebook("good")
    before = rebuild(path, tmp_path / "b1")
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("%%federated dataset"))
    cell.source = cell.source.replace("rounds=2", "rounds=3")
    nbformat.write(nb, path)
    assert rebuild(path, tmp_path / "b2") != before


def test_the_bundle_holds_code_only_and_the_manifest_follows_the_shipped_schema(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    listed = set(built.manifest["files"])
    assert listed == {"federated.py", "caia_runner.py", "config_fed_client.json", "requirements.txt"}
    on_disk = {p.relative_to(built.path).as_posix() for p in built.path.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.json", "records/build.json"}
    module = built.source("federated.py")
    assert "local exploration" not in module and "%%federated dataset" not in module
    for name in listed:  # no sample row reaches the bundle
        assert not any(row in (built.path / name).read_text() for row in corpus.SAMPLE_CSV.splitlines()[1:])
    assert built.manifest["datasets"] == {"tiny": {"columns": [{"name": "x1", "kind": "float"}, {"name": "x2", "kind": "float"}, {"name": "label", "kind": "int"}]}}
    assert built.manifest["job"] == {"rounds": 2, "min_clients": 1, "params": {"lr": 0.1}}
    assert "torch==" in built.source("requirements.txt")
    shipped = json.loads((bundle.Path(manifest.__file__).parent / "manifest.schema.json").read_text())
    assert shipped == manifest.json_schema()
    jsonschema.validate(json.loads((built.path / "manifest.json").read_text()), shipped)
    assert built.id == manifest.bundle_id(json.loads((built.path / "manifest.json").read_text()))


def test_cell_map_points_into_the_module(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    lines = built.source("federated.py").splitlines()
    for cell in built.record("build.json")["cells"]:
        assert lines[cell["start"] - 1].strip() == cell["first_line"]


def test_free_names_come_from_the_kernel_namespace(write_notebook, tmp_path):
    path = write_notebook("free_name")
    with pytest.raises(NotebookError, match="uses 'LEARNING_RATE', which no federated cell defines.*%federated bundle"):
        compose.build(path, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    built = compose.build(path, tmp_path / "b", namespace={"LEARNING_RATE": 0.25})
    assert "LEARNING_RATE = 0.25\n" in built.source("federated.py")
    assert not built.opaque_files


def test_non_literal_values_are_captured_opaque_and_flagged(write_notebook, tmp_path):
    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.25)})
    entry = built.manifest["files"]["captured/LEARNING_RATE.pkl"]
    assert entry["opaque"] is True and entry["role"] == "captured"
    assert entry["python_name"] == "LEARNING_RATE" and entry["python_type"] == "numpy.float32"
    assert "numpy==" in built.source("requirements.txt") and "cloudpickle" not in built.source("requirements.txt")
    assert "LEARNING_RATE = _caia_load_captured('LEARNING_RATE')" in built.source("federated.py")


def test_functions_from_local_cells_are_refused():
    def helper():
        pass

    helper.__module__ = "__main__"
    with pytest.raises(NotebookError, match="defined in a local cell; move its definition"):
        freenames.capture("helper", helper)


def test_free_name_analysis():
    source = (
        "import torch\nA = 1\n"
        "def f(x, b=B):\n    global G\n    G = 2\n    return [q * C for q in x] + torch.ones(1) + np.zeros(1) + len(x)\n"
        "class M(Base):\n    k = D\n"
    )
    assert freenames.free_names(source) == ["B", "Base", "C", "D", "np"]
    assert freenames.capture("np", np).source == "import numpy as np"
    assert freenames.literal_source({"b": (1,), "a": {3, 2}}) == "{'b': (1,), 'a': {2, 3}}"
    assert freenames.literal_source([1.0, float("nan")]) is None


@pytest.mark.parametrize("module, reason", [
    ("not_a_module_anywhere", "which is not installed here"),
    ("helpers", "which is a local module a bundle cannot carry"),
])
def test_imports_of_uninstalled_or_local_modules_are_refused(write_notebook, tmp_path, monkeypatch, module, reason):
    path = write_notebook("good")
    (path.parent / "helpers.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(path.parent))
    nb = nbformat.read(path, as_version=4)
    next(c for c in nb.cells if c.source.startswith("%%federated dataset")).source += f"import {module}\n"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=f"imports '{module}', {reason}"):
        compose.build(path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_rebuilding_with_the_same_id_keeps_records_and_a_new_id_drops_them(write_notebook, tmp_path):
    path = write_notebook("good")
    built = compose.build(path, tmp_path / "b")
    (built.records / "validation.json").write_text(json.dumps({"bundle_id": built.id}))
    compose.build(path, tmp_path / "b")
    assert (built.records / "validation.json").exists()
    nb = nbformat.read(path, as_version=4)
    nb.cells[5].source += "\n# changed\n"
    nbformat.write(nb, path)
    compose.build(path, tmp_path / "b")
    assert not (built.records / "validation.json").exists()


def data_like_values():
    import pandas as pd
    import torch

    frame = pd.DataFrame({"patient_id": [101, 102], "age": [54, 61]})
    return {
        "a DataFrame": (frame, "a pandas.DataFrame"),
        "a Series": (frame["age"], "a pandas.Series"),
        "an Index": (frame.index, "a pandas.Index"),
        "an ndarray": (np.zeros((3, 2)), "a numpy.ndarray"),
        "a 0-d ndarray": (np.array(0.5), "a numpy.ndarray"),
        "a tensor": (torch.zeros(2), "a torch.Tensor"),
        "a parameter": (torch.nn.Parameter(torch.zeros(2)), "a torch.Tensor"),
        "a long list of ids": (list(range(1000, 1065)), "a list of more than 64 items"),
        "a long tuple": (tuple(range(65)), "a tuple of more than 64 items"),
        "a long set": (set(range(65)), "a set of more than 64 items"),
        "a long dict": ({n: n for n in range(65)}, "a dict of more than 64 items"),
        "nested lists": ([[n] * 10 for n in range(7)], "a list of more than 64 items"),
        "a frame in a dict": ({"train": frame}, "a dict holding a pandas.DataFrame"),
        "a long text": ("x" * 10_001, "a str of 10001 characters"),
        "long bytes": (b"x" * 10_001, "a bytes of 10001 characters"),
        "a long text in a list": (["x" * 10_001], "a list holding a str of 10001 characters"),
    }


@pytest.mark.parametrize("case", list(data_like_values()))
def test_kernel_values_that_look_like_data_are_refused_pointing_to_load_data(case):
    value, reason = data_like_values()[case]
    with pytest.raises(NotebookError) as refused:
        freenames.capture("cohort", value)
    message = str(refused.value)
    assert f"uses 'cohort', {reason} from the kernel" in message and "load_data(ctx)" in message
    assert "ctx.dataset(" in message and "\n" not in message


@pytest.mark.parametrize("value", [
    [30, 16, 2], {0: "benign", 1: "malignant"}, list(range(64)), (0.9, 0.999), {"lr": 0.1, "sizes": [8, 4]}, "adam", None,
])
def test_short_settings_from_the_kernel_still_become_source(value):
    captured = freenames.capture("setting", value)
    assert captured.kind == "literal" and captured.source == f"setting = {freenames.literal_source(value)}"


def test_a_long_literal_and_a_big_opaque_value_are_refused_not_pickled():
    with pytest.raises(NotebookError, match=r"'names', a list of \d+ characters as source \(at most 10000\).*load_data\(ctx\)"):
        freenames.capture("names", ["n" * 5000, "m" * 5000])
    import types

    with pytest.raises(NotebookError, match=r"'blob', a SimpleNamespace that pickles to 5 MiB \(at most 4 MiB\)"):
        freenames.capture("blob", types.SimpleNamespace(data=bytes(5 << 20)))


def test_bundling_a_dataframe_from_the_kernel_writes_no_bundle(write_notebook, tmp_path):
    import pandas as pd

    with pytest.raises(NotebookError, match="'LEARNING_RATE', a pandas.DataFrame from the kernel"):
        compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": pd.DataFrame({"a": [1]})})
    assert not (tmp_path / "b").exists()


def test_the_build_record_holds_paths_relative_to_the_bundle_and_the_notebook(write_notebook, tmp_path):
    from caia_jupyter.researcher import validation

    path = write_notebook("good")
    for target, notebook in [(None, "../../good.ipynb"), (tmp_path / "out" / "b", "../../work/good.ipynb")]:
        built = compose.build(path, target)
        text = (built.records / "build.json").read_text()
        assert str(tmp_path) not in text
        assert json.loads(text)["notebook"] == notebook and json.loads(text)["samples"] == {"tiny": "samples/tiny.csv"}
        found = validation.sample_paths(built, built.record("build.json"))
        assert found["tiny"].resolve() == (path.parent / "samples" / "tiny.csv").resolve()


def test_a_sample_written_as_an_absolute_path_is_recorded_relative_to_the_notebook(write_notebook, tmp_path):
    path = write_notebook("good")
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("%%federated dataset"))
    cell.source = cell.source.replace("tiny:samples/tiny.csv", f"tiny:{path.parent / 'samples' / 'tiny.csv'}")
    nbformat.write(nb, path)
    built = compose.build(path)
    assert built.record("build.json")["samples"] == {"tiny": "samples/tiny.csv"}
    assert str(tmp_path) not in (built.records / "build.json").read_text()


def test_cells_python_compiles_alone_but_not_joined_are_refused_in_one_line(write_notebook, tmp_path):
    path = write_notebook("good")
    nb = nbformat.read(path, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell("%%federated\nG = 1\n"), nbformat.v4.new_code_cell("%%federated\nglobal G\n")]
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=r"^the federated cells, joined in order, are not valid Python at federated cell 7 "
                                            r"\(notebook cell 12\) line 2: name 'G' is assigned to before global declaration; "
                                            r"fix the cell that holds it$"):
        compose.build(path, tmp_path / "b")


def test_a_build_record_that_is_no_object_is_ignored_by_rebuilding_and_verifying(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    (built.records / "build.json").write_text("[1]")
    (built.records / "validation.json").write_text("[1]")
    assert built.record("validation.json") is None
    assert bundle.verify(built.path) == (built.id, [])
    assert compose.build(write_notebook("good"), tmp_path / "b").id == built.id


@pytest.mark.parametrize("module_name", ['numpy as np\nimport os; os.environ["CAIA_INJECTED"] = "1"  #', "numpy; import os",
                                         "numpy.", "class", "n\u00fcmpy", ""])
def test_a_module_whose_name_is_no_dotted_name_is_refused_not_written_as_an_import(module_name):
    import types

    with pytest.raises(NotebookError, match=r"^federated code uses 'np', a module whose name .* is not a dotted Python name; "
                                            r"import the module in a %%federated cell$") as refused:
        freenames.capture("np", types.ModuleType(module_name))
    assert "\n" not in str(refused.value)
