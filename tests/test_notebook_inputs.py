"""Notebooks as researchers' tools save them, read as IPython reads them (tests/cases 06, 07, 15).

Line endings, blank or indented lines around `%%federated`, whitespace-only lines, every
nbformat 4 minor version, cell ids or none, `source` as a string or a list; and every message
that names a line gives the line JupyterLab shows (from 1, the %%federated line included).
"""

import json
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest

import corpus
from caia_jupyter.contracts.errors import NotebookError
from caia_jupyter.contracts.fileset import MODULE
from caia_jupyter.researcher import annotations, compose, notebook, validation
from caia_jupyter.reviewer import signing
from caia_jupyter.site import sites
from caia_jupyter.targets.demo_sites import add_reviewer

CASES = Path(__file__).parent / "cases"
CRLF = CASES / "06-crlf-cell-source"
COMMENT = CASES / "07-comment-above-magic"
WHITESPACE = CASES / "15-whitespace-only-line"


def copy_case(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def module_of(path: Path) -> bytes:
    return compose.compose(path).files[MODULE]


# ---- case 06: line endings are not code ----

@pytest.mark.parametrize("variant", ["crlf_sources", "cr_only_sources", "crlf_file_lf_sources"])
def test_lf_crlf_and_cr_variants_give_one_bundle_id_and_a_module_without_cr(variant, tmp_path):
    folder = copy_case(CRLF, tmp_path)
    reference = compose.build(folder / "lf_reference.ipynb", tmp_path / "lf")
    built = compose.build(folder / f"{variant}.ipynb", tmp_path / variant)
    assert built.id == reference.id
    module = (built.path / MODULE).read_bytes()
    assert b"\r" not in module and module == (reference.path / MODULE).read_bytes()


def test_an_error_in_the_cr_variant_names_the_cell_and_the_line_jupyterlab_shows(tmp_path):
    folder = copy_case(CRLF, tmp_path)
    built = compose.build(folder / "cr_only_train_raises.ipynb", tmp_path / "b")
    module = built.source(MODULE).splitlines()
    line = next(i for i, text in enumerate(module, 1) if "raise ValueError" in text)
    error = {"stage": "round", "exception": "ValueError", "message": "synthetic failure in train", "line": line, "function": "train"}
    described = validation.describe_failure(error, None, built.record("build.json")["cells"])
    # notebook cell 5 reads "%%federated", "def train(...)", "features, labels = data", then the raise: line 4
    assert described["summary"] == ("federated cell 3 (notebook cell 5: 'def train(model, data, ctx):') line 4, in train: "
                                    "ValueError: synthetic failure in train")
    assert (described["cell"], described["notebook_cell"], described["cell_line"]) == (3, 5, 4)


@pytest.mark.slow
def test_validating_the_cr_variant_names_the_cell_and_line_of_the_failure(tmp_path, caia):
    folder = copy_case(CRLF, tmp_path)
    code, out, _ = caia("validate", folder / "cr_only_train_raises.ipynb")
    assert code == 1
    assert out.splitlines()[0] == ("validation FAILED: federated cell 3 (notebook cell 5: 'def train(model, data, ctx):') "
                                   "line 4, in train: ValueError: synthetic failure in train")


# ---- case 07: %%federated where IPython runs it as a cell magic, and nowhere else ----

@pytest.mark.parametrize("variant, why", [("comment_above", "a line is above it"), ("indented_magic", "it is indented")])
def test_a_magic_ipython_would_not_run_is_an_error_naming_the_cell_and_nothing_is_written(variant, why, tmp_path):
    folder = copy_case(COMMENT, tmp_path)
    with pytest.raises(NotebookError) as error:
        compose.build(folder / f"{variant}.ipynb", tmp_path / "out")
    assert str(error.value) == (f"notebook cell 5: %%federated must be its first line, unindented ({why}: IPython does "
                                "not run it as a cell magic and the cell fails in the kernel); start the cell with %%federated")
    assert not (tmp_path / "out").exists()


def test_blank_lines_above_the_magic_are_skipped_as_ipython_skips_them(tmp_path):
    folder = copy_case(COMMENT, tmp_path)
    reference = compose.compose(copy_case(CRLF, tmp_path) / "lf_reference.ipynb")
    composed = compose.compose(folder / "blank_lines_above.ipynb")
    assert composed.id == reference.id
    train = composed.notebook.cells[2]
    assert train.line_offset == 3 and train.first_line == "def train(model, data, ctx):"
    assert composed.build_record["cells"][2]["cell_line"] == 4  # two blank lines, %%federated, then def train


@pytest.mark.parametrize("prefix, why", [
    ("%%time\n", "it is inside %%time, and only a cell that %%federated opens is bundled"),
    ("%%capture\n", "it is inside %%capture, and only a cell that %%federated opens is bundled"),
    # %%writefile does not run its text, but caia cannot know what a magic does with it: refused too
    ("%%writefile evaluate.py\n", "it is inside %%writefile, and only a cell that %%federated opens is bundled"),
])
def test_a_federated_cell_below_another_cell_magic_is_an_error_naming_the_cell(prefix, why, tmp_path):
    folder = copy_case(CRLF, tmp_path)
    path = folder / "lf_reference.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[5].source = prefix + nb.cells[5].source  # the cell that defines evaluate
    nbformat.write(nb, path)
    with pytest.raises(NotebookError) as error:
        compose.build(path, tmp_path / "out")
    assert str(error.value) == f"notebook cell 6: %%federated must be its first line, unindented ({why}); start the cell with %%federated"
    assert not (tmp_path / "out").exists()


def test_a_byte_order_mark_before_the_magic_is_an_error_naming_the_cell(tmp_path):
    folder = copy_case(CRLF, tmp_path)
    path = folder / "lf_reference.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[5].source = "\ufeff" + nb.cells[5].source
    nbformat.write(nb, path)
    with pytest.raises(NotebookError) as error:
        compose.build(path, tmp_path / "out")
    assert str(error.value) == "notebook cell 6: IPython cannot read this cell (invalid non-printable character U+FEFF); fix it"
    assert not (tmp_path / "out").exists()


# Cell layouts around the magic; the in-process IPython shell decides what each is, and caia must agree.
LAYOUTS = {
    "plain": "%%federated\nX = 1\n",
    "blank lines above": "\n  \n%%federated\nX = 1\n",
    "everything indented alike": "  %%federated\n  X = 1\n",
    "indented magic only": "  %%federated\nX = 1\n",
    "comment above": "# a note\n%%federated\nX = 1\n",
    "code above": "Y = 2\n%%federated\nX = 1\n",
    "in a string": 'TEXT = """\n%%federated\n"""\n',
    "local": "X = 1\n",
    "crlf": "%%federated\r\nX = 1\r\n",
    "cr": "%%federated\rX = 1\r",
    "whitespace-only line": "%%federated\nX = 1\n    \nZ = 3\n",
    "tab after the magic": "%%federated\trounds=2\nX = 1\n",
    "a longer magic name": "%%federatedx\nX = 1\n",
    "below %%time": "%%time\n%%federated\nX = 1\n",
    "below %%capture": "%%capture\n%%federated\nX = 1\n",
    "below %%capture and %%time": "%%capture\n%%time\n%%federated\nX = 1\n",
    "below a comment inside %%capture": "%%capture\n# a note\n%%federated\nX = 1\n",
    "after %time": "%time %%federated\n",
    "the %federated line magic after %time": "%time %federated help\n",
    "a byte-order mark before the magic": "\ufeff%%federated\nX = 1\n",
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_caia_reads_a_cell_as_ipython_runs_it(layout, shell):
    source = LAYOUTS[layout]
    results = []  # the cell's, and those of cells a magic such as %%capture runs inside it
    shell.events.register("post_run_cell", results.append)
    shell.run_cell(source)
    failed = next((r.error_before_exec or r.error_in_exec for r in results if not r.success), None)
    magics = shell.magics_manager.registry["FederatedMagics"]
    try:
        found = notebook.split_cell(source, "notebook cell 1")
    except NotebookError as e:
        # Refused: the kernel fails on the cell, or runs %%federated where it does not open the cell
        assert failed is not None or magics.cells, f"caia refuses a cell IPython runs as local code: {e}"
        assert str(e).startswith("notebook cell 1")
        if magics.cells:
            assert "%%federated must be its first line" in str(e)
        return
    assert failed is None
    if found is None:
        assert magics.cells == {}  # IPython ran it as local code
    else:
        header, body, _ = found
        assert [notebook.normalise_newlines(c) for c in magics.cells] == [body]  # what IPython handed to %%federated
        assert header == annotations.Header()
        assert "\r" not in body


# ---- case 15: a whitespace-only line runs in the kernel, so it bundles ----

def test_a_whitespace_only_line_in_a_federated_cell_is_accepted(tmp_path, shell):
    folder = copy_case(WHITESPACE, tmp_path)
    built = compose.build(folder / "p0_whitespace_line.ipynb", tmp_path / "b")
    source = nbformat.read(folder / "p0_whitespace_line.ipynb", as_version=4).cells[3].source
    assert "\n    \n" in source
    result = shell.run_cell(source)  # defines load_data in the kernel
    assert result.error_before_exec is None and result.error_in_exec is None
    body = next(iter(shell.magics_manager.registry["FederatedMagics"].cells))
    assert body in built.source(MODULE)  # what IPython ran is what the bundle holds


# ---- every nbformat 4 minor version, ids or none, source as a string or a list ----

def variant(minor: int, ids: str, source: str) -> dict:
    nb = json.loads((CRLF / "lf_reference.ipynb").read_text())
    nb["nbformat_minor"] = minor
    for index, cell in enumerate(nb["cells"]):
        cell.pop("id", None)
        if ids != "none":
            cell["id"] = "same" if ids == "duplicate" else f"cell-{index}"
        if source == "string":
            cell["source"] = "".join(cell["source"])
    return nb


@pytest.mark.parametrize("minor", range(6))
@pytest.mark.parametrize("ids", ["none", "unique", "duplicate"])
@pytest.mark.parametrize("source", ["list", "string"])
def test_every_nbformat_4_minor_with_or_without_ids_and_either_source_form_gives_one_id(minor, ids, source, tmp_path):
    folder = copy_case(CRLF, tmp_path)
    reference = compose.compose(folder / "lf_reference.ipynb").id
    path = folder / "variant.ipynb"
    path.write_text(json.dumps(variant(minor, ids, source)))
    assert compose.compose(path).id == reference
    assert compose.compose(path).id == reference  # ids nbformat makes up for cells without one do not matter


# ---- line numbers as JupyterLab shows them ----

def write_cells(tmp_path: Path, edit) -> Path:
    """The good corpus notebook with `edit(cells)` applied to its list of code/markdown sources."""
    path = corpus.write("good", tmp_path)
    nb = nbformat.read(path, as_version=4)
    edit(nb.cells)
    nbformat.write(nb, path)
    return path


def train_cell(cells):
    return next(c for c in cells if "def train" in c.source)


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c, "source", c.source.replace("    x, y = data\n", "    x, y = data\n    y = y +\n")),
     "federated cell 4 (notebook cell 8) line 4: SyntaxError: invalid syntax; fix the cell"),
    (lambda c: setattr(c, "source", "\n\n" + c.source.replace("    x, y = data\n", "    x, y = data\n    y = y +\n")),
     "federated cell 4 (notebook cell 8) line 6: SyntaxError: invalid syntax; fix the cell"),
    (lambda c: setattr(c, "source", c.source.replace("    x, y = data\n", "    x, y = data\n    %time y = y\n")),
     "federated cell 4 (notebook cell 8) line 4 uses IPython syntax ('%time y = y'), which cannot run at a site; "
     "move it to a local cell"),
    (lambda c: setattr(c, "source", c.source.replace("    x, y = data\n", "    x, y = data  # \u202e\n")),
     "federated cell 4 (notebook cell 8) line 3: bidirectional control character U+202E (RIGHT-TO-LEFT OVERRIDE) "
     "changes the order in which the line is shown; remove it"),
    (lambda c: setattr(c, "source", c.source.replace("%%federated\n", "%%federated rounds=0\n")),
     "notebook cell 8 line 1: %%federated rounds='0' must be a whole number of at least 1"),
])
def test_messages_name_the_line_jupyterlab_shows(edit, message, tmp_path):
    path = write_cells(tmp_path, lambda cells: edit(train_cell(cells)))
    with pytest.raises(NotebookError) as error:
        compose.compose(path)
    assert str(error.value) == message


def test_cells_that_compile_alone_but_not_joined_name_the_cell_and_line(tmp_path):
    def edit(cells):
        cells += [nbformat.v4.new_code_cell("%%federated\nG = 1\n"), nbformat.v4.new_code_cell("%%federated\n\nglobal G\n")]

    with pytest.raises(NotebookError) as error:
        compose.compose(write_cells(tmp_path, edit))
    assert str(error.value) == ("the federated cells, joined in order, are not valid Python at federated cell 7 "
                                "(notebook cell 12) line 3: name 'G' is assigned to before global declaration; "
                                "fix the cell that holds it")


# ---- the README's every python block, in order, is one notebook that runs ----

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_cells() -> list[str]:
    """The README's fenced ```python blocks, in order: the cells of one notebook."""
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


def readme_notebook(folder: Path) -> Path:
    """The README's cells as `readme.ipynb` in `folder`, with the sample its %%federated line names."""
    (folder / "samples").mkdir(parents=True)
    shutil.copy(CRLF / "samples" / "tumours.csv", folder / "samples" / "tumours.csv")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source.rstrip("\n")) for source in readme_cells()])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "readme.ipynb")
    return folder / "readme.ipynb"


def test_the_readme_python_blocks_are_the_cells_of_one_notebook_that_bundles(tmp_path):
    cells = readme_cells()
    assert cells[0] == "%load_ext caia_jupyter\n" and any(c.startswith("run = %federated submit") for c in cells)
    composed = compose.compose(readme_notebook(tmp_path / "readme"))
    assert [c.ordinal for c in composed.notebook.cells] == [1]
    assert composed.manifest["job"] == {"rounds": 3, "min_clients": 2, "params": {"lr": 0.1}}


def readme_sites(folder: Path, bundle_id: str) -> None:
    """sites/site-1..3 as the README's submit names them, each with a `tumours` export of its own
    and a reviewer (key in reviewers/, outside the sites) who approved `bundle_id`."""
    rng = np.random.default_rng(11)
    for number in (1, 2, 3):
        name = f"site-{number}"
        site = sites.init(folder / "sites" / name, name)
        size = rng.uniform(0.5, 4.0, 30 + 10 * number)
        density = rng.uniform(0.0, 1.0, size.size)
        frame = pd.DataFrame({"size": size.round(2), "density": density.round(2),
                              "malignant": (size + density > 2.6).astype(int)})
        frame.to_csv(folder / f"{name}.csv", index=False)
        sites.add_dataset(site, "tumours", folder / f"{name}.csv")
        key = add_reviewer(site, folder / "reviewers" / f"{name}.key")
        signing.approve(site, bundle_id, {"tumours": "tumours"}, key)


@pytest.mark.slow
def test_the_readme_runs_as_written_under_papermill_against_three_simulated_sites(tmp_path):
    folder = tmp_path / "readme"
    path = readme_notebook(folder)
    # The sites' reviewers read and approve the bundle this notebook will build (its id is its content).
    readme_sites(folder, compose.compose(path).id)
    executed = folder / "readme.executed.ipynb"
    # PAPERMILL_INPUT_PATH is what `papermill --inject-input-path readme.ipynb ...` gives the kernel.
    papermill.execute_notebook(str(path), str(executed), cwd=str(folder), kernel_name="python3", progress_bar=False,
                               parameters={"PAPERMILL_INPUT_PATH": "readme.ipynb"}, execution_timeout=600)
    outputs = "\n".join(o.get("text", "") for cell in nbformat.read(executed, as_version=4).cells
                        for o in cell.get("outputs", []))
    assert "validation passed" in outputs
    assert "finished (3 rounds with site-1, site-2, site-3)" in outputs
    assert (folder / "bundles" / "readme" / "records" / "review.html").is_file()
    [run] = list((folder / "runs").iterdir())
    assert json.loads((run / "outcome.json").read_text())["status"] == "finished"
    assert (run / "global_model.pt").is_file()


def test_option_values_may_be_any_left_to_right_text_but_hidden_characters_in_them_are_refused(tmp_path):
    def header(text):
        return lambda cells: setattr(train_cell(cells), "source", train_cell(cells).source.replace("%%federated\n", text))

    composed = compose.compose(write_cells(tmp_path / "a", header("%%federated param.label=tumeur_bénigne\n")))
    assert composed.manifest["job"]["params"]["label"] == "tumeur_bénigne"
    with pytest.raises(NotebookError, match=r"^federated cell 4 \(notebook cell 8\) line 2: bidirectional control"):
        compose.compose(write_cells(tmp_path / "b", header("\n%%federated param.label=a\u202eb\n")))


def test_a_notebook_nested_too_deep_is_a_one_line_notebook_error(tmp_path):
    path = corpus.write("good", tmp_path)
    text = path.read_text()
    path.write_text(text.replace('"metadata": {', '"metadata": {"deep": ' + "[" * 3000 + "]" * 3000 + ", ", 1))
    with pytest.raises(NotebookError, match="nested too deeply") as raised:
        notebook.read(path)
    assert len(str(raised.value).splitlines()) == 1


def test_the_schema_checks_kept_are_one_per_schema_nbformat_ships(tmp_path):
    path = corpus.write("good", tmp_path)
    nb = json.loads(path.read_text())
    for minor in (10**6, 10**6 + 1, 10**6 + 2):  # minors nbformat does not know: its current schema
        path.write_text(json.dumps({**nb, "nbformat_minor": minor}))
        notebook.read(path)
    shipped = len(list((Path(nbformat.__file__).parent / "v4").glob("nbformat.v4*.schema.json")))
    assert notebook._validator.cache_info().currsize <= shipped
