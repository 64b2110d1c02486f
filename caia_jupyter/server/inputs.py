"""What a REST request may carry, read and checked before any of it reaches the core.

Each endpoint's query or body is a pydantic model; `from_query` and `from_body` turn anything
malformed into one `BadInput` line naming the field and the expected shape. A path field comes
out as a resolved `Path` under the server's root directory, or raises `OutsideRoot`.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError,
                      ValidationInfo, model_validator)
from pydantic_core import PydanticCustomError

from ..contracts.errors import CaiaError
from ..contracts.fileset import RECORDS
from ..overview import RUNS
from ..researcher import history
from ..researcher.compose import default_output

MAX_SINCE = 2**31 - 1  # far beyond any run's record count, and exact in the panel's JavaScript numbers


class BadInput(CaiaError):
    """A request's query or body is malformed: not JSON, a wrong type, a control character, out of range."""


class OutsideRoot(CaiaError):
    """A path, or a folder caia would write into, resolves outside the server's root directory."""


def _printable(value: str) -> str:
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":  # C0, DEL and C1: NUL, newlines, terminal escapes
            raise PydanticCustomError("control_character", "holds a control character (at position {position})",
                                      {"position": position})
    return value


def _under_root(value: str, info: ValidationInfo) -> Path:
    root: Path = info.context["root"]
    path = Path(os.path.realpath(root / value))  # follows every symlink; never raises on loops or long names
    if not path.is_relative_to(root):
        raise OutsideRoot(f"{value} is outside the server's root directory; pass a path relative to it")
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass  # the core says what is missing; a permission problem is answered where it happens
    except OSError as e:  # a name too long, a symlink loop
        raise BadInput(f"{value} cannot be opened: {e.strerror}") from e
    return path


Name = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_printable)]
# A path relative to the server's root, given as a string; validated into the resolved `Path`.
ServerPath = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_printable),
                       AfterValidator(_under_root)]


class Query(BaseModel):
    """A query string; other parameters (the websocket's `token`) are left to jupyter_server."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    usage: ClassVar[str]


class Body(BaseModel):
    """A JSON object body; unknown keys are refused, so a misspelt one is not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    usage: ClassVar[str]


class PathQuery(Query):
    usage = "?path=<file or folder under the server's root>"
    path: ServerPath


class NotebookQuery(Query):
    usage = "?path=<notebook>.ipynb (its runs are in runs/ beside it)"
    path: ServerPath


class RunQuery(Query):
    usage = "?path=<run folder>&since=<record count, 0 or more>"
    path: ServerPath
    since: int = Field(0, ge=0, le=MAX_SINCE)


class NotebookBody(Body):
    usage = '{"path": "<notebook>.ipynb"}'
    path: ServerPath


class SubmitBody(NotebookBody):
    usage = ('{"path": "<notebook>.ipynb", "target": "simulator" or "poc", "sites": ["<POC site name>", ...], '
             '"concurrent": false}')
    target: Literal["simulator", "poc"] = "simulator"
    sites: list[Name] | None = None
    concurrent: StrictBool = False  # start even while a run of the same bundle id is live

    @model_validator(mode="after")
    def _sites_only_for_poc(self):
        if self.target == "simulator" and self.sites is not None:
            raise PydanticCustomError("sites_for_simulator", "the simulator runs at the site folders in sites/ "
                                      "beside the notebook; leave 'sites' out")
        return self


BundleId = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class BundleQuery(Query):
    usage = "?path=<bundle folder, or .zip from caia pack, under the server's root>"
    path: ServerPath


class ApproveBody(Body):
    usage = ('{"path": "<bundle folder or .zip>", "bundle_id": "sha256:<64 hex>", "datasets": {"<requested name>": '
             '"<catalog id>"}, "expires_in_days": <days, optional>}')
    path: ServerPath
    bundle_id: BundleId
    datasets: dict[Name, Name] = Field(max_length=256)
    expires_in_days: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class RejectBody(Body):
    usage = '{"path": "<bundle folder or .zip>", "bundle_id": "sha256:<64 hex>", "reason": "<why, one line>"}'
    path: ServerPath
    bundle_id: BundleId
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
                      AfterValidator(_printable)]


def from_query(model: type[Query], arguments: dict[str, list[bytes]], root: Path) -> Query:
    """The query parameters (tornado's `request.query_arguments`; the last of a repeated one) as `model`.
    Raises `BadInput` for anything malformed, `OutsideRoot` for a path out of `root`."""
    try:
        raw = {name: values[-1].decode("utf-8") for name, values in arguments.items() if name in model.model_fields}
    except UnicodeDecodeError as e:
        raise BadInput(f"the query is not UTF-8; expected {model.usage}") from e
    return _validated(model, "query", lambda: model.model_validate(raw, context={"root": root}))


def from_body(model: type[Body], body: bytes, root: Path) -> Body:
    """The request body, which must be one JSON object, as `model`; raises as `from_query` does."""
    return _validated(model, "request body", lambda: model.model_validate_json(body, context={"root": root}))


def _validated(model, where: str, validate):
    try:
        return validate()
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        subject = f"'{field}' in the {where}" if field else f"the {where}"
        raise BadInput(f"{subject}: {first['msg']}; expected {model.usage}") from None


def refuse_outputs_outside_root(notebook: Path, root: Path) -> None:
    """Raise `OutsideRoot` naming the first folder caia writes into beside `notebook` (its bundle
    folder and records, its history and each entry of it, runs/) that leads out of `root` through a
    symlink. Nothing is created."""
    bundle = default_output(notebook)
    kept = history.folder(bundle)
    entries = sorted(kept.iterdir()) if kept.is_dir() else []
    for folder in (bundle.parent, bundle, bundle / RECORDS, kept.parent, kept, *entries, notebook.parent / RUNS):
        if not Path(os.path.realpath(folder)).is_relative_to(root):
            raise OutsideRoot(f"{folder.relative_to(root)} leads outside the server's root directory (a symlink); "
                              "caia writes there, so make it a folder inside the root")
