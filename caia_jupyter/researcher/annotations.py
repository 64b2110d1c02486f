"""The one grammar of `%%federated` header lines, shared by the cell magic and the bundler.

    %%federated [OPTION ...]

The options are `OPTIONS` (syntax, meaning); `usage()` renders them, and `%federated help` prints
that. Options may sit on any federated cell; a setting given twice must agree.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import operator
import re
import shlex
import textwrap
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
# The bounds of a DP number, read from `DifferentialPrivacy`'s own fields, and how caia words each.
_BOUNDS = {"gt": ("above", operator.gt), "ge": ("at least", operator.ge), "lt": ("below", operator.lt),
           "le": ("at most", operator.le)}


def _limits(key: str) -> list[tuple[str, float]]:
    """[(bound, limit)] of DifferentialPrivacy's field `key`, e.g. [("gt", 0), ("le", 100.0)]."""
    return [(bound, getattr(m, bound)) for m in DifferentialPrivacy.model_fields[key].metadata
            for bound in _BOUNDS if hasattr(m, bound)]


def _range(key: str) -> str:
    """The bounds of a DP number in words: "above 0 and at most 100"."""
    return " and ".join(f"{_BOUNDS[bound][0]} {limit:g}" for bound, limit in _limits(key))


OPTIONS: tuple[tuple[str, str], ...] = (
    ("dataset=NAME[:SAMPLE]", "request dataset NAME at every site (repeatable). SAMPLE is a local CSV of synthetic "
                              "rows with the site's columns: validation runs on it and the bundle records its column "
                              "names and dtypes"),
    ("standard.NAME=FILE", "the standard dataset NAME must meet: FILE a Frictionless Table Schema (JSON) beside the "
                           "notebook with the sample's columns as fields (start one with `caia standard infer`). The "
                           "sample must satisfy it; sites check their data against it and answer with counts"),
    ("rounds=N", f"federated rounds (default {DEFAULT_ROUNDS})"),
    ("min_clients=N", f"sites that must report each round (default {DEFAULT_MIN_CLIENTS})"),
    ("param.KEY=VALUE", 'a hyperparameter, read at sites as ctx.params["KEY"]; VALUE is a Python literal, or else a '
                        "plain string"),
    ("privacy=dp", "differential privacy (DP-SGD) at every site; needs epsilon= and delta="),
    ("epsilon=E", f"with privacy=dp: the budget of each site's whole run (every round, every local epoch), "
                  f"{_range('epsilon')}"),
    ("delta=D", f"with privacy=dp: the probability that the epsilon bound fails, {_range('delta')}; keep it well "
                "below 1 / a site's records"),
    ("max_grad_norm=C", f"with privacy=dp: the per-example gradient clipping bound (L2), {_range('max_grad_norm')} "
                        "(default 1.0)"),
    ("local_epochs=K", f"with privacy=dp: the passes over a site's data per round the noise is calibrated for, "
                       f"{_range('local_epochs')} (default 1)"),
    ("encryption=he", "sites encrypt their updates (CKKS); the aggregator sums ciphertexts. Runs on a POC started "
                      "with `caia poc up --he`, not on the simulator"),
    ("updates=weight_diff", "sites send their weights' difference from the global model (not with encryption=he)"),
)
_OPTION_NAMES = tuple(syntax.partition("=")[0] for syntax, _ in OPTIONS)


def usage() -> str:
    """The `%%federated` grammar for people: a line per option of `OPTIONS`, wrapped at 100 columns."""
    width = max(len(syntax) for syntax, _ in OPTIONS) + 2
    lines = [f"{MAGIC} [OPTION ...]  marks a cell for the sites; its options:"]
    for syntax, meaning in OPTIONS:
        lines.append(textwrap.fill(meaning, 100, initial_indent=f"  {syntax:<{width}}", subsequent_indent=" " * (width + 2)))
    return "\n".join(lines + ["Options may sit on any federated cell; a setting given twice must agree."])


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
    standards: dict = field(default_factory=dict)  # dataset name -> standard file, relative to the notebook


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
    standards: dict = field(default_factory=dict)  # dataset name -> standard file, relative to the notebook

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
    standards: dict = {}
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
        elif key.startswith("standard.") and _NAME.match(key[9:]):
            if key[9:] in standards:
                raise NotebookError(f"%%federated option {key} is given twice on one line")
            standards[key[9:]] = value
        elif key in _CHOICES or key in _DP_NUMBERS:
            if key in protection:
                raise NotebookError(f"%%federated option {key} is given twice on one line")
            protection[key] = _choice(key, value) if key in _CHOICES else _dp_number(key, value)
        else:
            raise NotebookError(f"unknown %%federated option {key!r}{_did_you_mean(key)}; the options are "
                                f"{', '.join(name + '=' for name in _OPTION_NAMES)} (see `%federated help`)")
    return Header(tuple(datasets), numbers.get("rounds"), numbers.get("min_clients"), params, protection, standards)


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, _OPTION_NAMES, n=1)
    return f" (did you mean {close[0]}=?)" if close else ""


def merge(headers: list[tuple[str, Header]]) -> Settings:
    """Merge the headers of all federated cells; `label` names a cell in error messages, which
    start with the label of the cell that gave the option at fault. Raises NotebookError."""
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
        for key, value in header.standards.items():
            put(f"standard.{key}", value, label, scalars)
        for key, value in header.protection.items():
            put(key, value, label, scalars)
    given = {key: value for key, (_, value) in scalars.items()}
    return Settings(
        datasets=tuple(request for _, request in datasets.values()),
        rounds=given.get("rounds", DEFAULT_ROUNDS),
        min_clients=given.get("min_clients", DEFAULT_MIN_CLIENTS),
        params={k[6:]: v for k, v in given.items() if k.startswith("param.")},
        standards={k[9:]: v for k, v in given.items() if k.startswith("standard.")},
        privacy=_privacy(scalars),
        **_transfer(scalars),
    )


def _transfer(given: dict[str, tuple[str, object]]) -> dict:
    """The merged encryption and updates options (`given`: key -> (label, value)); NotebookError naming
    the cells when both are given."""
    if "encryption" in given and "updates" in given:
        cells = " and ".join(dict.fromkeys(given[key][0] for key in ("encryption", "updates")))
        raise NotebookError(f"{cells}: %%federated encryption=he sends encrypted weights: drop updates=weight_diff (a "
                            "site whose privacy policy needs weight differences cannot take an encrypted bundle)")
    return {key: given[key][1] if key in given else None for key in ("encryption", "updates")}


def _choice(key: str, value: str) -> str:
    if value not in _CHOICES[key]:
        raise NotebookError(f"%%federated {key}={value!r} is not known; use {key}={' or '.join(_CHOICES[key])}")
    return _CHOICES[key][value]


def _dp_number(key: str, value: str) -> int | float:
    """A DP number as the manifest holds it, within `DifferentialPrivacy`'s bounds; NotebookError in caia's words."""
    whole = key == "local_epochs"
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    if (number is None or not value.isascii() or not math.isfinite(number)  # int() reads Arabic-Indic digits too
            or not all(_BOUNDS[bound][1](number, limit) for bound, limit in _limits(key))):
        raise NotebookError(f"%%federated {key}={value!r} must be {'a whole number,' if whole else 'a number'} {_range(key)}")
    return number


def _privacy(given: dict[str, tuple[str, object]]) -> DifferentialPrivacy | None:
    """The DP-SGD request of the merged options (`given`: key -> (label, value)), or None; NotebookError
    (one line, naming the cell) when incomplete. Each number was checked against its bounds when parsed."""
    numbers = {key: given[key][1] for key in _DP_NUMBERS if key in given}
    if "privacy" not in given:
        if numbers:
            label = given[next(iter(numbers))][0]
            raise NotebookError(f"{label}: %%federated {'=, '.join(numbers)}= apply to differential privacy; add privacy=dp")
        return None
    label = given["privacy"][0]
    missing = [key for key in ("epsilon", "delta") if key not in numbers]
    if missing:
        raise NotebookError(f"{label}: %%federated privacy=dp needs a budget: epsilon= and delta= (missing "
                            f"{' and '.join(key + '=' for key in missing)}; e.g. epsilon=3 delta=1e-5)")
    try:
        return DifferentialPrivacy(**numbers)
    except ValidationError as e:  # a rule across fields; single values were checked by _dp_number
        raise NotebookError(f"{label}: %%federated privacy=dp: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


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
