"""Tabular dataset schemas, and the one reader of dataset tables (CSV or Parquet).

A schema is a list of {"name": column, "kind": bool|int|float|datetime|str}: the order is the
order federated code receives the columns in. A bundle records the schema of the researcher's
synthetic sample; a site checks that the dataset it releases has those columns. Only names and
kinds are ever reported, never values.

Every table is read by `read_table`, whole, the same way everywhere (a site's catalog, its guard,
`ctx.dataset`, the researcher's samples): kinds are those of the whole file as pandas reads it, so
a column with a blank in its last row is float wherever it is read. How to read a file (`detect`)
is decided from its bytes: Parquet, or CSV text in UTF-8 (with or without a byte order mark), with
`,` `;` tab or `|` between columns and `.` or `,` as decimal mark; a site records it at
`add-dataset` so that every later read of that dataset is the same read.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
from pathlib import Path

import pandas as pd

from .errors import SiteError

KINDS = ("bool", "int", "float", "datetime", "str")
SEPARATORS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
DECIMALS = (".", ",")
ENCODINGS = ("utf-8", "utf-8-sig")  # UTF-8, and UTF-8 that starts with a byte order mark
SNIFF_BYTES = 64 * 1024  # the head of a CSV that decides its separator and decimal mark
INT_WITH_MISSING = "integers with missing values"
_COMMA_NUMBER = re.compile(r"[+-]?\d+,\d+")
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+")


def detect(path: str | Path) -> dict:
    """How to read the table at `path`, from its bytes (never from its name).

    Returns {"format": "parquet"} or {"format": "csv", "separator": one of SEPARATORS,
    "decimal": "." or ",", "encoding": "utf-8" or "utf-8-sig", "compression": None or "gzip"}.
    Raises SiteError (one line naming what was found and the fix) for a missing or empty file,
    a spreadsheet, text that is not UTF-8, or a CSV whose separator or decimal mark is ambiguous.
    """
    path = Path(path)
    head = _head(path)
    if head.startswith(b"PAR1"):
        return {"format": "parquet"}
    if head.startswith(b"PK\x03\x04"):
        raise SiteError(f"dataset file {path} is a ZIP archive (an Excel workbook?); save the sheet as CSV (UTF-8) or Parquet")
    compression = None
    if head.startswith(b"\x1f\x8b"):
        compression = "gzip"
        with gzip.open(path) as file:
            head = _read_head(path, file)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SiteError(f"dataset file {path} is UTF-16 text; re-save it as UTF-8, e.g. "
                        f"`iconv -f utf-16 -t utf-8 {path} > {_utf8_name(path)}`")
    encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(head) >= SNIFF_BYTES:
        lines = lines[:-1]  # the last line may be cut
    if not lines:
        raise SiteError(f"dataset file {path} is empty; export the table with a header row and its rows")
    separator = _separator(path, lines)
    return {"format": "csv", "separator": separator, "decimal": _decimal(path, lines[1:], separator),
            "encoding": encoding, "compression": compression}


def read_table(path: str | Path, read: dict | None = None) -> pd.DataFrame:
    """The whole table at `path` (at least one row), read as `read` says (a `detect` result;
    default: `detect(path)`).

    Raises SiteError (one line) for a file that is missing, cannot be read that way, is not UTF-8,
    or has no rows.
    """
    path = Path(path)
    _exists(path)
    read = detect(path) if read is None else _checked(path, read)
    try:
        if read["format"] == "parquet":  # the Parquet schema's own types, not dtypes pandas wrote beside them
            import pyarrow.parquet

            frame = pyarrow.parquet.read_table(path).to_pandas(ignore_metadata=True)
        else:  # low_memory=False: pandas infers each column's type from all its rows at once
            frame = pd.read_csv(path, sep=read["separator"], decimal=read["decimal"], encoding=read["encoding"],
                                compression=read["compression"], low_memory=False)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except (ValueError, OSError, pd.errors.ParserError) as e:  # pyarrow's errors are ValueError or OSError
        what = "Parquet" if read["format"] == "parquet" else f"CSV ({describe(read)})"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SiteError(f"dataset file {path} is not readable {what}: {reason}") from e
    if len(frame.index) == 0:
        what = "Parquet file" if read["format"] == "parquet" else "CSV"
        raise SiteError(f"dataset file {path}: the {what} has a header but no rows; export the table with its rows")
    return frame


def describe(read: dict) -> str:
    """How a table is read, in words: "Parquet" or e.g. "';'-separated, decimal ',', UTF-8 with BOM"."""
    if read["format"] == "parquet":
        return "Parquet"
    encoding = "UTF-8 with BOM" if read["encoding"] == "utf-8-sig" else "UTF-8"
    gz = ", gzip" if read["compression"] else ""
    return f"{SEPARATORS[read['separator']]}-separated, decimal {read['decimal']!r}, {encoding}{gz}"


def columns_of(path: str | Path, read: dict | None = None) -> list[dict]:
    """The schema of the table at `path`, read by `read_table`."""
    return schema_of(read_table(path, read))


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


def mismatches(requested: list[dict], frame: pd.DataFrame) -> list[str]:
    """Why the columns of `frame` do not satisfy the `requested` schema; an int column serves a
    float request. A float column of whole numbers with blanks is named as integers with missing
    values, never by a value."""
    problems = []
    for column in requested:
        name, kind = column["name"], column["kind"]
        if name not in frame.columns:
            problems.append(f"missing column {name!r}")
            continue
        have = kind_of(frame[name].dtype)
        if have == kind or (kind == "float" and have == "int"):
            continue
        if kind == "int" and have == "float" and _whole_with_missing(frame[name]):
            problems.append(f"column {name!r} is float, requested int: it holds {INT_WITH_MISSING} (blank cells, which "
                            "pandas reads as float); fill or drop them at the site, or request float (a decimal in the sample)")
        else:
            problems.append(f"column {name!r} is {have}, requested {kind}")
    return problems


def notes_of(frame: pd.DataFrame) -> dict[str, str]:
    """Column name -> what its kind hides, for float columns that hold integers with missing values."""
    return {str(name): INT_WITH_MISSING for name in frame.columns
            if kind_of(frame[name].dtype) == "float" and _whole_with_missing(frame[name])}


def _whole_with_missing(series: pd.Series) -> bool:
    present = series.dropna()
    return len(present) < len(series) and len(present) > 0 and bool((present == present.round()).all())


def _exists(path: Path) -> None:
    if not path.is_file():
        raise SiteError(f"dataset file {path} does not exist")


def _head(path: Path) -> bytes:
    _exists(path)
    try:
        with path.open("rb") as file:
            return _read_head(path, file)
    except OSError as e:
        raise SiteError(f"dataset file {path} cannot be read: {e.strerror or e}") from e


def _read_head(path: Path, file) -> bytes:
    try:
        return file.read(SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise SiteError(f"dataset file {path} cannot be read: {e}") from e


def _separator(path: Path, lines: list[str]) -> str:
    """The column separator of a CSV's first lines, by csv.Sniffer among SEPARATORS; ',' for one column."""
    try:
        separator = csv.Sniffer().sniff("\n".join(lines), delimiters="".join(SEPARATORS)).delimiter
    except csv.Error:  # one column, or lines that disagree
        separator = ","
    header = next(csv.reader([lines[0]], delimiter=separator))
    found = [name for mark, name in SEPARATORS.items() if len(header) == 1 and mark in header[0]]
    if found:
        raise SiteError(f"dataset file {path}: cannot tell its column separator (its header holds {' and '.join(found)} "
                        "but its rows do not split the same way); export it with one separator: , ; tab or |")
    return separator


def _decimal(path: Path, rows: list[str], separator: str) -> str:
    """The decimal mark of a CSV's data lines: ',' only where numbers are written 1,5 and never 1.5."""
    if separator == ",":
        return "."
    cells = [cell.strip() for row in csv.reader(rows, delimiter=separator) for cell in row]
    comma = any(_COMMA_NUMBER.fullmatch(cell) for cell in cells)
    if comma and any(_POINT_NUMBER.fullmatch(cell) for cell in cells):
        raise SiteError(f"dataset file {path} writes decimal numbers both as 1,5 and as 1.5; "
                        "export it with one decimal mark")
    return "," if comma else "."


def _checked(path: Path, read) -> dict:
    """`read` if it is a `detect` result, else SiteError."""
    valid = isinstance(read, dict) and (
        read == {"format": "parquet"}
        or (read.get("format") == "csv" and set(read) == {"format", "separator", "decimal", "encoding", "compression"}
            and read["separator"] in SEPARATORS and read["decimal"] in DECIMALS
            and read["encoding"] in ENCODINGS and read["compression"] in (None, "gzip")))
    if not valid:
        raise SiteError(f"how to read {path} is recorded wrongly ({read!r}); register it again with `caia site add-dataset`")
    return read


def _not_utf8(path: Path, error: UnicodeDecodeError) -> SiteError:
    byte = error.object[error.start:error.start + 1].hex()
    return SiteError(f"dataset file {path} is not UTF-8 text (byte 0x{byte}, as Latin-1 or Windows-1252 write é); "
                     f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {_utf8_name(path)}`")


def _utf8_name(path: Path) -> str:
    return str(path.with_name(f"{path.name.split('.')[0]}-utf8.csv"))
