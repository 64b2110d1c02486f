"""Tabular dataset schemas: column names and kinds, in order, read from CSV files.

A schema is a list of {"name": column, "kind": bool|int|float|datetime|str}: the order is the
order federated code receives the columns in. A bundle records the schema of the researcher's
synthetic sample; a site checks that the dataset it releases has those columns. Only names and
kinds are ever reported, never values.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import SiteError

KINDS = ("bool", "int", "float", "datetime", "str")
SCHEMA_ROWS = 100_000  # rows read to infer kinds; enough to see a column's type


def read_table(path: str | Path, nrows: int | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SiteError(f"dataset file {path} does not exist; fix the path in the catalog")
    if not path.name.endswith((".csv", ".csv.gz")):
        raise SiteError(f"dataset file {path} is not a .csv file; caia reads CSV tables")
    try:
        return pd.read_csv(path, nrows=nrows)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise SiteError(f"dataset file {path} is not readable CSV: {str(e).splitlines()[0]}") from e


def columns_of(path: str | Path) -> list[dict]:
    """The schema of the CSV at `path`."""
    return schema_of(read_table(path, nrows=SCHEMA_ROWS))


def schema_of(frame: pd.DataFrame) -> list[dict]:
    return [{"name": str(name), "kind": kind_of(frame[name].dtype)} for name in frame.columns]


def kind_of(dtype) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "str"


def mismatches(requested: list[dict], actual: list[dict]) -> list[str]:
    """Why `actual` columns do not satisfy `requested` ones; an int column serves a float request."""
    have = {c["name"]: c["kind"] for c in actual}
    problems = []
    for column in requested:
        name, kind = column["name"], column["kind"]
        if name not in have:
            problems.append(f"missing column {name!r}")
        elif have[name] != kind and not (kind == "float" and have[name] == "int"):
            problems.append(f"column {name!r} is {have[name]}, requested {kind}")
    return problems
