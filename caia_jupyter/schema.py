"""Tabular dataset schemas: column names and kinds, read from CSV files.

A bundle records the schema of the researcher's synthetic sample; a site checks that the
dataset it releases has those columns. Only names and kinds are ever reported, never values.
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


def columns_of(path: str | Path) -> dict[str, str]:
    """{column: kind} of the CSV at `path`."""
    frame = read_table(path, nrows=SCHEMA_ROWS)
    return {str(name): kind_of(frame[name].dtype) for name in frame.columns}


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


def mismatches(requested: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Why `actual` columns do not satisfy `requested` ones; an int column serves a float request."""
    problems = []
    for column, kind in requested.items():
        if column not in actual:
            problems.append(f"missing column {column!r}")
        elif actual[column] != kind and not (kind == "float" and actual[column] == "int"):
            problems.append(f"column {column!r} is {actual[column]}, requested {kind}")
    return problems
