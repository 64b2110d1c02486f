"""Writes that never leave anything half-done: stage beside the target, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(target: Path):
    """Yield an empty directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield stage
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rename(target, old / target.name)
            os.rename(stage, target)
            shutil.rmtree(old)
        else:
            os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> dict:
    """The JSON object at `path`, or {} while it does not exist (yet), cannot be read or is no object."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: absurd nesting in a file received
        return {}
    return found if isinstance(found, dict) else {}


def loads_strict(data: bytes | str):
    """Parse JSON refusing duplicate keys (a person reading the file and a program reading it must
    see the same values) and NaN/Infinity (not JSON); raises ValueError (UnicodeDecodeError for
    bytes that are not UTF-8, RecursionError for absurd nesting)."""

    def unique(pairs):
        found = {}
        for key, value in pairs:
            if key in found:
                raise ValueError(f"duplicate key {key!r}")
            found[key] = value
        return found

    def refuse_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(data, object_pairs_hook=unique, parse_constant=refuse_constant)


def write_json(path: Path, obj, mode: int | None = None) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", mode)
