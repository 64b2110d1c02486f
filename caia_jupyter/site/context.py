"""`ctx`: the only door from federated code to a site's resources."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import pandas as pd

from ..contracts import schema
from ..contracts.errors import ContractError, DatasetNotReleased, SiteError


class Context:
    """What federated code sees of the site it runs at.

    `site` and `round` say where and when; `params` holds the bundle's hyperparameters;
    `dataset(name)` returns a released dataset restricted to the requested columns;
    `make_private(model, optimizer, data_loader)` hands out DP-SGD when the bundle requests it
    (`privacy`: the manifest's job.privacy, a `contracts.privacy.DifferentialPrivacy` as a dict;
    read-only: the site's request, which the site accounts against whatever the code does).
    """

    def __init__(self, site: str, params: dict, datasets: dict[str, dict], rounds: int = 1, round: int = 0,
                 reader: Callable[[str, dict], pd.DataFrame] | None = None, privacy: dict | None = None):
        self.site = site
        self.params = MappingProxyType(dict(params))
        self.rounds = rounds
        self.round = round
        # name -> {"path": table, "read": how (schema.detect; detected when absent), "columns": [{"name", "kind"}, ...]}
        self._datasets = datasets
        # (name, spec) -> the released frame; in the sandbox, a per-run copy the site's runtime made
        self._read = reader or (lambda name, spec: read_released(self.site, name, spec))
        self._privacy = MappingProxyType(dict(privacy)) if privacy else None
        self._rows: dict[str, int] = {}  # name -> rows of the released dataset as `dataset` last returned it
        self._private = None  # dp_sgd.PrivateTraining for the site's request
        if privacy:
            from ..contracts.privacy import DifferentialPrivacy
            from .dp_sgd import PrivateTraining

            self._private = PrivateTraining(DifferentialPrivacy.model_validate(dict(privacy)), rounds)

    @property
    def privacy(self):
        """The bundle's differential privacy request (job.privacy, read-only), or None."""
        return self._privacy

    @property
    def private_training(self):
        """The run's `dp_sgd.PrivateTraining` here (None without DP): the runtime's side of make_private."""
        return self._private

    @property
    def released_rows(self) -> int:
        """Rows of the released datasets the code has read here (each counted once): what a DP loader may hold."""
        return sum(self._rows.values())

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
        frame = self._read(name, self._datasets[name])
        self._rows[name] = len(frame)
        return frame

    def make_private(self, model, optimizer, data_loader):
        """Opacus's (model, optimizer, data_loader) for DP-SGD within the bundle's budget: train with
        these three, every round (call it each round, with the same model). The noise is calibrated
        once for the whole run (every round, `local_epochs` passes per round, this site's sample
        rate 1/len(data_loader)); one accountant counts every step. The model caia sends is the
        plain `model` (the one train received), trained in place through the returned wrapper;
        `data_loader` is over the released data (at most `released_rows` rows).

        Raises ContractError (one line) when the bundle requests no differential privacy, the model
        or the loader is not as above, the budget is too low for the run, or Opacus cannot train the
        model privately (e.g. BatchNorm, named with the fix)."""
        if self.privacy is None:
            raise ContractError("ctx.make_private: this bundle requests no differential privacy; add privacy=dp "
                                "epsilon=... delta=... to its %%federated line", failure="contract", entry="train")
        return self._private.make_private(model, optimizer, data_loader, self.released_rows)

    def privacy_spent(self) -> tuple[float, int]:
        """(epsilon spent so far by this run here, DP-SGD steps taken so far), as this process counts
        them: (0.0, 0) before make_private. The site's runtime computes its own (`dp_sgd.account`)."""
        return self._private.spent() if self._private is not None else (0.0, 0)

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
