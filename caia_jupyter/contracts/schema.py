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
`add-dataset` so that every later read of that dataset is the same read. The separator comes from
the file's head; the decimal mark holds for the whole file (`read_table` refuses a file that also
writes numbers the other way, wherever they are).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
import threading
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SiteError

if TYPE_CHECKING:  # pandas is imported where a table is read: `caia verify` and the manifest never need it
    import pandas as pd

KINDS = ("bool", "int", "float", "datetime", "str")
NUMERIC = ("int", "float")  # kinds whose statistics (mean, histogram...) NVFLARE computes
SEPARATORS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
DECIMALS = (".", ",")
ENCODINGS = ("utf-8", "utf-8-sig")  # UTF-8, and UTF-8 that starts with a byte order mark
SNIFF_BYTES = 64 * 1024  # the head of a CSV that decides its separator (and its decimal mark, checked on the whole file)
SNIFF_LINES = 20  # ... extended to this many lines, so a wide table's head holds its header and rows
PARQUET_MAGIC = b"PAR1"  # at the start and at the end of every Parquet file
PARQUET_SUFFIXES = (".parquet", ".pq")
INT_WITH_MISSING = "integers with missing values"
# Python's warning filters belong to the whole process: one CSV read at a time turns pandas'
# warning about dropped values into a refusal (the Jupyter server reads in a thread pool).
_WARNINGS_ARE_GLOBAL = threading.Lock()
_COMMA_NUMBER = re.compile(r"[+-]?\d+,\d+")
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+")


def detect(path: str | Path) -> dict:
    """How to read the table at `path`, from its bytes: Parquet by its magic bytes at both ends
    (or a name ending .parquet or .pq), else CSV.

    Returns {"format": "parquet"} or {"format": "csv", "separator": one of SEPARATORS,
    "decimal": "." or ",", "encoding": "utf-8" or "utf-8-sig", "compression": None or "gzip"}.
    The separator is decided from the head (at least SNIFF_BYTES and SNIFF_LINES lines), the
    decimal mark from the whole file: a `;`, tab or `|` file with no decimal comma in its head is
    read whole to find any later one.
    Raises SiteError (one line naming what was found and the fix) for a missing or empty file,
    a spreadsheet, text that is not UTF-8, or a CSV whose separator or decimal mark is ambiguous.
    """
    path = Path(path)
    if _is_parquet(path):
        return {"format": "parquet"}
    head, whole = _head(path, open)
    if head.startswith(b"PK\x03\x04"):
        raise SiteError(f"dataset file {path} is a ZIP archive (an Excel workbook?); save the sheet as CSV (UTF-8) or Parquet")
    compression = None
    if head.startswith(b"\x1f\x8b"):
        compression = "gzip"
        head, whole = _head(path, gzip.open)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SiteError(f"dataset file {path} is UTF-16 text; re-save it as UTF-8, e.g. "
                        f"`iconv -f utf-16 -t utf-8 {path} > {_utf8_name(path)}`")
    encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=whole)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not whole:
        lines = lines[:-1]  # the last line may be cut
    if not lines:
        raise SiteError(f"dataset file {path} is empty; export the table with a header row and its rows")
    separator = _separator(path, lines)
    read = {"format": "csv", "separator": separator, "decimal": _decimal(path, lines[1:], separator),
            "encoding": encoding, "compression": compression}
    if not whole and separator != "," and read["decimal"] == "." and _marks(_read(path, read))[0]:
        read["decimal"] = ","  # decimal commas past the head: read_table now refuses any 1.5 as well
    return read


def read_table(path: str | Path, read: dict | None = None) -> pd.DataFrame:
    """The whole table at `path` (at least one row), read as `read` says (a `detect` result;
    default: `detect(path)`).

    Raises SiteError (one line) for a file that is missing, cannot be read that way (cut short,
    corrupt, not UTF-8, rows with more values than the header names), has no rows, or writes
    decimal numbers both as 1,5 and as 1.5 (or as 1,5 where `read` says decimal '.').
    """
    path = Path(path)
    _exists(path)
    read = detect(path) if read is None else _checked(path, read)
    frame = _read(path, read)
    if read["format"] == "csv" and read["separator"] != ",":
        comma, point = _marks(frame)
        if point and (comma or read["decimal"] == ","):
            raise SiteError(f"dataset file {path} writes decimal numbers both as 1,5 and as 1.5; "
                            "export it with one decimal mark")
        if comma and read["decimal"] == ".":
            raise SiteError(f"dataset file {path} writes decimal numbers as 1,5 but is recorded to be read with "
                            "decimal '.'; register it again with `caia site add-dataset --replace`")
    if len(frame.index) == 0:
        what = "the Parquet file has columns" if read["format"] == "parquet" else "the CSV has a header"
        raise SiteError(f"dataset file {path}: {what} but no rows; export the table with its rows")
    return frame


def _read(path: Path, read: dict) -> pd.DataFrame:
    """The table at `path` read as `read` says, as pandas types it; every failure to read it is a
    one-line SiteError, whatever the layer that failed (gzip, zlib, the CSV parser, pyarrow)."""
    import pandas as pd
    import pyarrow
    import pyarrow.parquet

    try:
        if read["format"] == "parquet":  # the Parquet schema's own types, not dtypes pandas wrote beside them
            return pyarrow.parquet.read_table(path).to_pandas(ignore_metadata=True)
        with _WARNINGS_ARE_GLOBAL, warnings.catch_warnings():
            # index_col=False: a row ending in a separator is not shifted under a first-column index; pandas drops
            # such empty last values, and warns only when a dropped value is not empty: that is refused
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # low_memory=False: pandas infers each column's type from all its rows at once
            return pd.read_csv(path, index_col=False, low_memory=False, **_csv_options(read))
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except pd.errors.ParserWarning:
        raise _longer_rows(path, read) from None
    except (ValueError, OSError, EOFError, zlib.error, pyarrow.ArrowException) as e:
        what = "Parquet" if read["format"] == "parquet" else f"CSV ({describe(read)})"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SiteError(f"dataset file {path} is not readable {what}: {reason}") from e


def _csv_options(read: dict) -> dict:
    return {"sep": read["separator"], "decimal": read["decimal"], "encoding": read["encoding"],
            "compression": read["compression"]}


def _longer_rows(path: Path, read: dict) -> SiteError:
    """Rows with more values than the header names: for one column of `1,5`, a decimal comma or two values?"""
    import pandas as pd

    try:
        names = len(pd.read_csv(path, nrows=0, **_csv_options(read)).columns)
    except (ValueError, OSError, EOFError, zlib.error):
        names = 0
    if names == 1:
        return SiteError(f"dataset file {path} has one column, but its rows hold {SEPARATORS[read['separator']]}: "
                         "a value like 1,5 may be a decimal comma or two values; write decimals as 1.5, "
                         "or name every column in the header")
    return SiteError(f"dataset file {path} ({describe(read)}) has rows with more values than its header names; "
                     "name every column in the header, or remove the extra values")


def _marks(frame: pd.DataFrame) -> tuple[bool, bool]:
    """Whether text cells of `frame` are numbers written 1,5 and written 1.5. A number written with
    the mark the table was read with is read as a number, so a mark found here is one the read missed."""
    comma = point = False
    for name in frame.columns:
        if kind_of(frame[name].dtype) == "str":
            cells = frame[name].dropna().astype(str).str.strip()
            comma = comma or bool(cells.str.fullmatch(_COMMA_NUMBER.pattern).any())
            point = point or bool(cells.str.fullmatch(_POINT_NUMBER.pattern).any())
    return comma, point


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
    import pandas as pd

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


def _is_parquet(path: Path) -> bool:
    """Parquet by its name, or by its magic bytes at both ends (a CSV may start with a column named PAR1)."""
    _exists(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with path.open("rb") as file:
            if file.read(len(PARQUET_MAGIC)) != PARQUET_MAGIC or path.stat().st_size < 3 * len(PARQUET_MAGIC):
                return False
            file.seek(-len(PARQUET_MAGIC), 2)
            return file.read() == PARQUET_MAGIC
    except OSError as e:
        raise SiteError(f"dataset file {path} cannot be read: {e.strerror or e}") from e


def _head(path: Path, opener) -> tuple[bytes, bool]:
    """The first SNIFF_BYTES of the file (`opener`: open or gzip.open), extended until they hold
    SNIFF_LINES lines; and whether that is the whole file."""
    try:
        with opener(path, "rb") as file:
            head, size = b"", SNIFF_BYTES
            while True:
                chunk = file.read(size)
                head += chunk
                if len(chunk) < size:
                    return head, True
                if max(head.count(b"\n"), head.count(b"\r")) > SNIFF_LINES:
                    return head, False
                size = len(head)  # doubling: a wide header is read in a few reads
    except (OSError, EOFError, zlib.error) as e:
        raise SiteError(f"dataset file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from e


def _separator(path: Path, lines: list[str]) -> str:
    """The column separator of a CSV's first lines, by csv.Sniffer among SEPARATORS; ',' for one column.
    Rows that end in a separator (as some exports write them) are sniffed without it."""
    separator = ","  # one column, or lines that disagree
    for sample in (lines, [line[:-1] if line[-1:] in SEPARATORS else line for line in lines]):
        try:
            separator = csv.Sniffer().sniff("\n".join(sample), delimiters="".join(SEPARATORS)).delimiter
            break
        except csv.Error:
            continue
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
    return SiteError(f"dataset file {path} is not UTF-8 text (byte 0x{byte}, as Latin-1 or Windows-1252 write "
                     f"{bytes.fromhex(byte).decode('cp1252', 'replace')!r}); "
                     f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {_utf8_name(path)}`")


def _utf8_name(path: Path) -> str:
    return str(path.with_name(f"{path.name.split('.')[0]}-utf8.csv"))
