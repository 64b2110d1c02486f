"""`ctx`: the only door from federated code to a site's resources."""

from __future__ import annotations

from types import MappingProxyType

import pandas as pd

from ..contracts import schema
from ..contracts.errors import DatasetNotReleased, SiteError


class Context:
    """What federated code sees of the site it runs at.

    `site` and `round` say where and when; `params` holds the bundle's hyperparameters;
    `dataset(name)` returns a released dataset restricted to the requested columns.
    """

    def __init__(self, site: str, params: dict, datasets: dict[str, dict], rounds: int = 1, round: int = 0):
        self.site = site
        self.params = MappingProxyType(dict(params))
        self.rounds = rounds
        self.round = round
        # name -> {"path": table, "read": how (schema.detect; detected when absent), "columns": [{"name", "kind"}, ...]}
        self._datasets = datasets

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
        spec = self._datasets[name]
        try:
            frame = schema.read_table(spec["path"], spec.get("read"))
        except SiteError as e:
            raise SiteError(f"site {self.site} dataset {name!r}: {e}", failure="dataset_unreadable") from e
        problems = schema.mismatches(spec["columns"], frame)
        if problems:
            raise SiteError(f"site {self.site} dataset {name!r} no longer matches the approved schema: {problems[0]}",
                            failure="schema_changed")
        return frame[[column["name"] for column in spec["columns"]]].copy()

    def __repr__(self) -> str:
        return f"Context(site={self.site!r}, round={self.round}/{self.rounds}, datasets={list(self.datasets)})"
