"""The one grammar of `%%federated` header lines, shared by the cell magic and the bundler.

    %%federated [OPTION ...]

    dataset=NAME[:SAMPLE]  request dataset NAME at every site (repeatable). SAMPLE is a local
                           CSV of synthetic rows with the site's columns: validation runs on
                           it and the bundle records its column names and dtypes.
    rounds=N               federated rounds (default 3)
    min_clients=N          sites that must report each round (default 2)
    param.KEY=VALUE        a hyperparameter, read at sites as ctx.params["KEY"]; VALUE is a
                           Python literal, or else a plain string

Options may sit on any federated cell; a setting given twice must agree.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field

from ..contracts.errors import NotebookError

MAGIC = "%%federated"
DEFAULT_ROUNDS = 3
DEFAULT_MIN_CLIENTS = 2
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


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


@dataclass(frozen=True)
class Settings:
    """The options of all federated cells of a notebook, merged."""

    datasets: tuple[DatasetRequest, ...]
    rounds: int
    min_clients: int
    params: dict


def parse_options(text: str) -> Header:
    """Parse what follows `%%federated` on the header line."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise NotebookError(f"%%federated options {text.strip()!r}: {e}; quote values with spaces") from e
    datasets: list[DatasetRequest] = []
    numbers: dict[str, int] = {}
    params: dict = {}
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
        else:
            raise NotebookError(
                f"unknown %%federated option {key!r}; use dataset=, rounds=, min_clients= or param.NAME="
            )
    return Header(tuple(datasets), numbers.get("rounds"), numbers.get("min_clients"), params)


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
    return Settings(
        datasets=tuple(request for _, request in datasets.values()),
        rounds=scalars.get("rounds", (None, DEFAULT_ROUNDS))[1],
        min_clients=scalars.get("min_clients", (None, DEFAULT_MIN_CLIENTS))[1],
        params={k[6:]: v for k, (_, v) in scalars.items() if k.startswith("param.")},
    )


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
