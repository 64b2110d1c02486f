"""One stream of metric records, (site, round, name, value, time), read by every surface.

The server's receiver appends records as JSON lines; `MetricsReader.poll()` returns the
records that arrived since the last call, however the file grows (partial lines wait).
A record whose metric name is not a short identifier (`contracts.metric_names`) is left out. A
value of None is a metric the site sent that was not a finite number: recorded as missing; so is
any value read that is not a finite number (NaN or Infinity tokens, text, a bool), whatever wrote
the file, so every value read is a finite float or None and every surface emits valid JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..contracts.metric_names import valid_name


@dataclass(frozen=True)
class Record:
    site: str
    round: int
    name: str
    value: float | None  # None: not a finite number at the site, recorded as missing
    time: float

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, line: bytes) -> Record | None:
        """A record from one JSON line, or None unless it is exactly one, its name a metric name
        (`metric_names.NAME`): the file holds what the server received (and, on a deployed
        federation, what the follower pulled), untrusted."""
        try:
            raw = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict) or set(raw) != {"site", "round", "name", "value", "time"}:
            return None
        time = finite(raw["time"])
        if not (isinstance(raw["site"], str) and valid_name(raw["name"]) and type(raw["round"]) is int
                and time is not None):
            return None
        return cls(raw["site"], raw["round"], raw["name"], finite(raw["value"]), time)


def finite(value) -> float | None:
    """`value` as a float if it is a finite number (an int or a float, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        return None
    return number if math.isfinite(number) else None


class MetricsReader:
    """Incremental reader of a metrics JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._records: list[Record] = []

    def poll(self) -> list[Record]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = [r for r in map(Record.parse, complete.splitlines()) if r is not None]
        self._records += new
        return new

    @property
    def records(self) -> list[Record]:
        """Every record read so far (call poll() first for the newest)."""
        return list(self._records)


def frame(records: list[Record]) -> pd.DataFrame:
    """The records as a DataFrame (site, round, name, value, time); a missing value is NaN."""
    columns = ["site", "round", "name", "value", "time"]
    return pd.DataFrame([r.to_json() for r in records], columns=columns)
