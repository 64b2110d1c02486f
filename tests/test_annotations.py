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
