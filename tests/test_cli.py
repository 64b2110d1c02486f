import json

import pytest


@pytest.mark.parametrize("name, message", [
    ("not_json", "is not a notebook: not valid JSON"),
    ("nbformat_invalid", "is not a valid notebook:"),
    ("no_federated_cells", "has no federated cells; start the cells meant for the sites with %%federated"),
    ("syntax_error", "federated cell 2 (notebook cell 6) line 1: SyntaxError"),
    ("magic_inside", "federated cell 3 (notebook cell 7) line 2 uses IPython syntax ('%time frame = ctx.dataset(\"tiny\")')"),
    ("shell_inside", "line 4 uses IPython syntax ('!pip install torch')"),
    ("missing_evaluate", "federated cells do not define evaluate(model, data, ctx)"),
    ("free_name", "uses 'LEARNING_RATE', which no federated cell defines"),
])
@pytest.mark.parametrize("command", ["bundle", "validate"])
def test_bad_notebooks_get_one_line_errors_exit_2_and_nothing_written(write_notebook, caia, name, message, command):
    path = write_notebook(name)
    before = sorted(p.name for p in path.parent.rglob("*"))
    code, out, err = caia(command, path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("caia: error: ")
    assert message in err
    assert sorted(p.name for p in path.parent.rglob("*")) == before


def test_missing_notebook_and_missing_sample(write_notebook, caia, tmp_path):
    code, _, err = caia("bundle", tmp_path / "nope.ipynb")
    assert code == 2 and "does not exist" in err
    path = write_notebook("good")
    (path.parent / "samples" / "tiny.csv").unlink()
    code, _, err = caia("bundle", path)
    assert code == 2 and "sample samples/tiny.csv of dataset 'tiny' does not exist" in err


def test_bundle_prints_the_id_last_and_json_on_request(write_notebook, caia, tmp_path):
    path = write_notebook("good")
    code, out, _ = caia("bundle", path, "-o", tmp_path / "b")
    assert code == 0
    bundle_id = out.strip().splitlines()[-1]
    assert bundle_id.startswith("sha256:") and len(bundle_id) == 71
    code, out, _ = caia("bundle", path, "-o", tmp_path / "b", "--json")
    data = json.loads(out)
    assert data["bundle_id"] == bundle_id and data["manifest"]["job"]["rounds"] == 2


def test_usage_errors_are_one_line_exit_2(caia):
    code, _, err = caia("bundle")
    assert code == 2 and err.count("\n") == 1 and "required" in err
    code, _, err = caia("frobnicate")
    assert code == 2 and "invalid choice" in err


def test_site_commands(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-9")
    assert code == 0 and "site site-9 created" in out
    (tmp_path / "d.csv").write_text("a,b\n1,x\n")
    code, out, _ = caia("site", "add-dataset", tmp_path / "s", "d1", tmp_path / "d.csv", "--json")
    assert code == 0 and json.loads(out)["columns"] == [{"name": "a", "kind": "int"}, {"name": "b", "kind": "str"}]
    code, _, err = caia("site", "add-dataset", tmp_path / "s", "d2", tmp_path / "missing.csv")
    assert code == 2 and "does not exist" in err
    code, out, _ = caia("site", "show", tmp_path / "s", "--json")
    assert json.loads(out)["datasets"] == ["d1"]
    code, _, err = caia("site", "show", tmp_path)
    assert code == 2 and "is not a caia site" in err
