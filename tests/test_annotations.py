import pytest

from caia_jupyter.contracts.errors import NotebookError
from caia_jupyter.researcher import annotations
from caia_jupyter.researcher.annotations import DatasetRequest


def test_options_are_parsed():
    header = annotations.parse_options(" dataset=ct:samples/ct.csv dataset=labs rounds=4 min_clients=2 param.lr=0.01 param.opt=adam")
    assert header.datasets == (DatasetRequest("ct", "samples/ct.csv"), DatasetRequest("labs", None))
    assert (header.rounds, header.min_clients) == (4, 2)
    assert header.params == {"lr": 0.01, "opt": "adam"}


@pytest.mark.parametrize("options, fragment", [
    ("rounds=0", "at least 1"),
    ("rounds=two", "whole number"),
    # str.isdigit() admits these, int() refuses them: each a one-line refusal naming the option
    ("rounds=\u00b2", "%%federated rounds='\u00b2' must be a whole number of at least 1"),
    ("min_clients=\u00b3", "%%federated min_clients='\u00b3' must be a whole number of at least 1"),
    ("rounds=\u2082", "%%federated rounds='\u2082' must be a whole number"),
    ("min_clients=\u0663", "%%federated min_clients='\u0663' must be a whole number"),  # Arabic-Indic 3: int() takes it
    ("epochs=3", "unknown %%federated option 'epochs'"),
    ("dataset", "not KEY=VALUE"),
    ("dataset=bad/name", "dataset name"),
    ("dataset=a dataset=a", "requested twice"),
    ("param.x=1+2j", "JSON-like"),
    ("dataset='unterminated", "quote"),
])
def test_bad_options_get_one_line_errors(options, fragment):
    with pytest.raises(NotebookError, match=fragment.replace("(", r"\(")) as info:
        annotations.parse_options(options)
    assert "\n" not in str(info.value)


def test_settings_merge_across_cells_and_conflicts_name_both_cells():
    a = annotations.parse_options("dataset=ct:s.csv rounds=4")
    b = annotations.parse_options("dataset=ct param.lr=0.1")
    settings = annotations.merge([("cell 1", a), ("cell 2", b)])
    assert settings.datasets == (DatasetRequest("ct", "s.csv"),)
    assert (settings.rounds, settings.min_clients, settings.params) == (4, annotations.DEFAULT_MIN_CLIENTS, {"lr": 0.1})
    with pytest.raises(NotebookError, match="rounds is 4 in cell 1 but 5 in cell 2"):
        annotations.merge([("cell 1", a), ("cell 2", annotations.parse_options("rounds=5"))])
    with pytest.raises(NotebookError, match="give one sample"):
        annotations.merge([("cell 1", a), ("cell 2", annotations.parse_options("dataset=ct:other.csv"))])


# The protection options: one grammar, listed by `%federated help`, errors in caia's words naming the cell

PROTECTION = ("privacy=", "epsilon=", "delta=", "max_grad_norm=", "local_epochs=", "encryption=", "updates=")


def test_usage_lists_every_option_the_parser_takes():
    text = annotations.usage()
    for syntax, _ in annotations.OPTIONS:
        assert f"  {syntax} " in text, syntax
    for option in ("dataset=", "rounds=", "min_clients=", "param.KEY=", *PROTECTION):
        assert f"\n  {option}" in text, option
        if option != "param.KEY=":  # each listed option is one the parser knows
            with pytest.raises(NotebookError) as info:
                annotations.parse_options(f"{option}%")
            assert "unknown" not in str(info.value)


def test_an_unknown_option_lists_every_option_and_the_closest_one():
    with pytest.raises(NotebookError) as info:
        annotations.parse_options("privacy=dp epsilion=3")
    message = str(info.value)
    assert message.startswith("unknown %%federated option 'epsilion' (did you mean epsilon=?); the options are ")
    assert all(option in message for option in PROTECTION) and message.endswith("(see `%federated help`)")


@pytest.mark.parametrize("option, message", [
    ("epsilon=-1", "%%federated epsilon='-1' must be a number above 0 and at most 100"),
    ("epsilon=0", "%%federated epsilon='0' must be a number above 0 and at most 100"),
    ("epsilon=101", "%%federated epsilon='101' must be a number above 0 and at most 100"),
    ("epsilon=inf", "%%federated epsilon='inf' must be a number above 0 and at most 100"),
    ("delta=1", "%%federated delta='1' must be a number above 0 and below 1"),
    ("delta=nan", "%%federated delta='nan' must be a number above 0 and below 1"),
    ("max_grad_norm=0", "%%federated max_grad_norm='0' must be a number above 0"),
    ("local_epochs=0", "%%federated local_epochs='0' must be a whole number, at least 1 and at most 10000"),
    ("local_epochs=1.5", "%%federated local_epochs='1.5' must be a whole number, at least 1 and at most 10000"),
    ("local_epochs=\u0663", "%%federated local_epochs='\u0663' must be a whole number"),  # int() reads Arabic-Indic 3
])
def test_a_dp_number_out_of_range_is_refused_on_its_line_in_caias_words(option, message):
    with pytest.raises(NotebookError) as info:
        annotations.parse_options(f"privacy=dp {option}")
    assert str(info.value).startswith(message) and "input should" not in str(info.value).lower()


def test_the_bounds_are_those_of_the_manifests_contract():
    """A value just inside each bound passes the parser and the contract alike."""
    header = annotations.parse_options("privacy=dp epsilon=100 delta=0.999 max_grad_norm=1e-9 local_epochs=10000")
    settings = annotations.merge([("cell 1", header)])
    assert settings.privacy.epsilon == 100 and settings.privacy.local_epochs == 10000


def cells(*lines: str) -> list:
    return [(f"federated cell {i + 1} (notebook cell {i + 3})", annotations.parse_options(line)) for i, line in enumerate(lines)]


@pytest.mark.parametrize("lines, message", [
    (("rounds=2", "epsilon=3 delta=1e-5"),
     "federated cell 2 (notebook cell 4): %%federated epsilon=, delta= apply to differential privacy; add privacy=dp"),
    (("privacy=dp epsilon=3", "rounds=2"),
     "federated cell 1 (notebook cell 3): %%federated privacy=dp needs a budget: epsilon= and delta= (missing delta=;"),
    (("rounds=2", "privacy=dp"), "federated cell 2 (notebook cell 4): %%federated privacy=dp needs a budget: epsilon= "
                                 "and delta= (missing epsilon= and delta=;"),
    (("encryption=he", "updates=weight_diff"),
     "federated cell 1 (notebook cell 3) and federated cell 2 (notebook cell 4): %%federated encryption=he sends "
     "encrypted weights: drop updates=weight_diff"),
    (("rounds=2", "encryption=he updates=weight_diff"),
     "federated cell 2 (notebook cell 4): %%federated encryption=he sends encrypted weights"),
])
def test_merge_level_protection_errors_name_the_cell(lines, message):
    with pytest.raises(NotebookError) as info:
        annotations.merge(cells(*lines))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_notebooks_protection_error_names_its_cell_as_jupyterlab_numbers_it(tmp_path):
    import nbformat

    from caia_jupyter.researcher import notebook

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# study"),
        nbformat.v4.new_code_cell("%%federated rounds=2\ndef build_model():\n    return None\n"),
        nbformat.v4.new_code_cell("local = 1"),
        nbformat.v4.new_code_cell("%%federated epsilon=3 delta=1e-5\nLR = 0.1\n"),
    ])
    path = tmp_path / "study.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=r"^federated cell 2 \(notebook cell 4\): %%federated epsilon=, delta= apply"):
        notebook.read(path)
    nb.cells[3].source = "%%federated epsilon=-1\nLR = 0.1\n"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=r"^notebook cell 4 line 1: %%federated epsilon='-1' must be a number above 0"):
        notebook.read(path)
