"""`ctx`: the only door from federated code to a site's resources."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import pandas as pd

from ..contracts import schema
from ..contracts.errors import DatasetNotReleased, SiteError


class Context:
    """What federated code sees of the site it runs at.

    `site` and `round` say where and when; `params` holds the bundle's hyperparameters;
    `dataset(name)` returns a released dataset restricted to the requested columns.
    """

    def __init__(self, site: str, params: dict, datasets: dict[str, dict], rounds: int = 1, round: int = 0,
                 reader: Callable[[str, dict], pd.DataFrame] | None = None):
        self.site = site
        self.params = MappingProxyType(dict(params))
        self.rounds = rounds
        self.round = round
        # name -> {"path": table, "read": how (schema.detect; detected when absent), "columns": [{"name", "kind"}, ...]}
        self._datasets = datasets
        # (name, spec) -> the released frame; in the sandbox, a per-run copy the site's runtime made
        self._read = reader or (lambda name, spec: read_released(self.site, name, spec))

    @property
    def datasets(self) -> tuple[str, ...]:
        """Names of the datasets released to this bundle here."""
        return tuple(sorted(self._datasets))

    def dataset(self, name: str) -> pd.DataFrame:
        """The released dataset `name`: a pandas DataFrame of the requested columns, in their order,
        with every row of the table (read whole, as the site's guard read it).

        Raises DatasetNotReleased (not released here) or SiteError (its file cannot be read, or
        no longer matches the approved schema); at a site only their category reaches the researcher.
        """
        if name not in self._datasets:
            released = ", ".join(self.datasets) or "none"
            raise DatasetNotReleased(
                f"site {self.site} did not release dataset {name!r} to this bundle (released: {released}); "
                "request it with %%federated dataset= and ask the site's reviewers to approve it"
            )
        return self._read(name, self._datasets[name])

    def __repr__(self) -> str:
        return f"Context(site={self.site!r}, round={self.round}/{self.rounds}, datasets={list(self.datasets)})"


def read_released(site: str, name: str, spec: dict) -> pd.DataFrame:
    """Released dataset `name` at `site` ({"path", "read", "columns"} of the release): the whole table,
    read as the site's guard read it, checked against the approved schema and cut to its columns.

    Raises SiteError with failure "dataset_unreadable" or "schema_changed"."""
    try:
        frame = schema.read_table(spec["path"], spec.get("read"))
    except SiteError as e:
        raise SiteError(f"site {site} dataset {name!r}: {e}", failure="dataset_unreadable") from e
    problems = schema.mismatches(spec["columns"], frame)
    if problems:
        raise SiteError(f"site {site} dataset {name!r} no longer matches the approved schema: {problems[0]}",
                        failure="schema_changed")
    return frame[[column["name"] for column in spec["columns"]]].copy()
