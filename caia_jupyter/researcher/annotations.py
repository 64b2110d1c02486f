"""The one grammar of `%%federated` header lines, shared by the cell magic and the bundler.

    %%federated [OPTION ...]

    dataset=NAME[:SAMPLE]  request dataset NAME at every site (repeatable). SAMPLE is a local
                           CSV of synthetic rows with the site's columns: validation runs on
                           it and the bundle records its column names and dtypes.
    rounds=N               federated rounds (default 3)
    min_clients=N          sites that must report each round (default 2)
    param.KEY=VALUE        a hyperparameter, read at sites as ctx.params["KEY"]; VALUE is a
                           Python literal, or else a plain string
    privacy=dp             differential privacy (DP-SGD) at every site, with
      epsilon=E delta=D    the budget of each site's whole run (both required),
      max_grad_norm=C      the per-example clipping bound (default 1.0) and
      local_epochs=K       the passes over a site's data per round (default 1)
    encryption=he          sites encrypt their updates (CKKS); the aggregator sums ciphertexts
    updates=weight_diff    sites send their weights' difference from the global model

Options may sit on any federated cell; a setting given twice must agree.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field

from pydantic import ValidationError

from ..contracts.errors import NotebookError
from ..contracts.privacy import DifferentialPrivacy

MAGIC = "%%federated"
DEFAULT_ROUNDS = 3
DEFAULT_MIN_CLIENTS = 2
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Protection options and the manifest value each allowed word becomes (`contracts.privacy`).
_CHOICES = {"privacy": {"dp": "dp"}, "encryption": {"he": "he-ckks"}, "updates": {"weight_diff": "weight_diff"}}
_DP_NUMBERS = ("epsilon", "delta", "max_grad_norm", "local_epochs")


@dataclass(frozen=True)
class DatasetRequest:
    name: str
    sample: str | None = None


@dataclass(frozen=True)
class Header:
    """The options of one `%%federated` line."""

    datasets: tuple[DatasetRequest, ...] = ()
    rounds: int | None = None
    min_clients: int | None = None
    params: dict = field(default_factory=dict)
    protection: dict = field(default_factory=dict)  # privacy, encryption, updates and the DP numbers, as given


@dataclass(frozen=True)
class Settings:
    """The options of all federated cells of a notebook, merged."""

    datasets: tuple[DatasetRequest, ...]
    rounds: int
    min_clients: int
    params: dict
    privacy: DifferentialPrivacy | None = None
    encryption: str | None = None
    updates: str | None = None

    def job(self) -> dict:
        """The manifest's "job" (`contracts.manifest.JobSettings`); protection only when requested."""
        job = {"rounds": self.rounds, "min_clients": self.min_clients, "params": self.params}
        if self.privacy:
            job["privacy"] = self.privacy.model_dump(mode="json")
        job.update({k: v for k, v in (("encryption", self.encryption), ("updates", self.updates)) if v})
        return job


def parse_options(text: str) -> Header:
    """Parse what follows `%%federated` on the header line."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise NotebookError(f"%%federated options {text.strip()!r}: {e}; quote values with spaces") from e
    datasets: list[DatasetRequest] = []
    numbers: dict[str, int] = {}
    params: dict = {}
    protection: dict = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise NotebookError(f"%%federated option {token!r} is not KEY=VALUE; see `%federated help`")
        if key == "dataset":
            name, _, sample = value.partition(":")
            if not _NAME.match(name):
                raise NotebookError(f"%%federated dataset name {name!r} must be letters, digits, '_', '.' or '-'")
            if any(d.name == name for d in datasets):
                raise NotebookError(f"%%federated dataset {name!r} is requested twice on one line")
            datasets.append(DatasetRequest(name, sample or None))
        elif key in ("rounds", "min_clients"):
            if key in numbers:
                raise NotebookError(f"%%federated option {key} is given twice on one line")
            if not (value.isascii() and value.isdigit()) or int(value) < 1:  # str.isdigit alone admits '²'
                raise NotebookError(f"%%federated {key}={value!r} must be a whole number of at least 1")
            numbers[key] = int(value)
        elif key.startswith("param.") and _NAME.match(key[6:]):
            params[key[6:]] = _literal(value)
        elif key in _CHOICES or key in _DP_NUMBERS:
            if key in protection:
                raise NotebookError(f"%%federated option {key} is given twice on one line")
            protection[key] = _choice(key, value) if key in _CHOICES else _dp_number(key, value)
        else:
            raise NotebookError(
                f"unknown %%federated option {key!r}; use dataset=, rounds=, min_clients=, param.NAME=, "
                "privacy=, encryption= or updates= (see `%federated help`)"
            )
    return Header(tuple(datasets), numbers.get("rounds"), numbers.get("min_clients"), params, protection)


def merge(headers: list[tuple[str, Header]]) -> Settings:
    """Merge the headers of all federated cells; `label` names a cell in error messages."""
    datasets: dict[str, tuple[str, DatasetRequest]] = {}
    scalars: dict[str, tuple[str, object]] = {}

    def put(key: str, value, label: str, seen: dict):
        if key in seen and seen[key][1] != value:
            other, old = seen[key]
            raise NotebookError(f"{key} is {old!r} in {other} but {value!r} in {label}; give it once")
        seen.setdefault(key, (label, value))

    for label, header in headers:
        for request in header.datasets:
            first_label, first = datasets.get(request.name, (label, request))
            if first.sample and request.sample and first.sample != request.sample:
                raise NotebookError(
                    f"dataset {request.name!r} has sample {first.sample!r} in {first_label} "
                    f"but {request.sample!r} in {label}; give one sample"
                )
            datasets[request.name] = (first_label, first if first.sample else request)
        for key in ("rounds", "min_clients"):
            if getattr(header, key) is not None:
                put(key, getattr(header, key), label, scalars)
        for key, value in header.params.items():
            put(f"param.{key}", value, label, scalars)
        for key, value in header.protection.items():
            put(key, value, label, scalars)
    given = {key: value for key, (_, value) in scalars.items()}
    return Settings(
        datasets=tuple(request for _, request in datasets.values()),
        rounds=given.get("rounds", DEFAULT_ROUNDS),
        min_clients=given.get("min_clients", DEFAULT_MIN_CLIENTS),
        params={k[6:]: v for k, v in given.items() if k.startswith("param.")},
        privacy=_privacy(given),
        **_transfer(given),
    )


def _transfer(given: dict) -> dict:
    """The merged encryption and updates options; NotebookError when both are given."""
    if given.get("encryption") and given.get("updates"):
        raise NotebookError("%%federated encryption=he sends encrypted weights: drop updates=weight_diff (a site "
                            "whose privacy policy needs weight differences cannot take an encrypted bundle)")
    return {"encryption": given.get("encryption"), "updates": given.get("updates")}


def _choice(key: str, value: str) -> str:
    if value not in _CHOICES[key]:
        raise NotebookError(f"%%federated {key}={value!r} is not known; use {key}={' or '.join(_CHOICES[key])}")
    return _CHOICES[key][value]


def _dp_number(key: str, value: str) -> int | float:
    try:
        return int(value) if key == "local_epochs" else float(value)
    except ValueError:
        kind = "a whole number" if key == "local_epochs" else "a number"
        raise NotebookError(f"%%federated {key}={value!r} must be {kind}") from None


def _privacy(given: dict) -> DifferentialPrivacy | None:
    """The DP-SGD request of the merged options, or None; NotebookError (one line) when incomplete or out of range."""
    numbers = {key: given[key] for key in _DP_NUMBERS if key in given}
    if given.get("privacy") != "dp":
        if numbers:
            raise NotebookError(f"%%federated {'=, '.join(numbers)}= apply to differential privacy; add privacy=dp")
        return None
    if "epsilon" not in numbers or "delta" not in numbers:
        raise NotebookError("%%federated privacy=dp needs a budget: epsilon= and delta= (e.g. epsilon=3 delta=1e-5)")
    try:
        return DifferentialPrivacy(**numbers)
    except ValidationError as e:
        error = e.errors()[0]
        raise NotebookError(f"%%federated {error['loc'][0]}={numbers.get(error['loc'][0])!r}: {error['msg'].lower()}") from None


def _literal(value: str):
    """A Python literal that survives JSON (it goes into the manifest), else the plain string."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    try:
        if json.loads(json.dumps(parsed, allow_nan=False)) == parsed:
            return parsed
    except (TypeError, ValueError):
        pass
    raise NotebookError(f"%%federated param value {value!r} must be a JSON-like literal (number, string, list, dict)")
